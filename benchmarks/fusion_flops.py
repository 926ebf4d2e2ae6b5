"""FLOPs of each fusion regime at the paper's MBT-B/16 setting (8 frames, 8 s of audio).

Reproduces the paper's cost claim: bottleneck fusion costs next to nothing over late fusion,
while vanilla cross-attention grows fast as the fusion layer moves down.

    python benchmarks/fusion_flops.py
"""

from __future__ import annotations

from mbt.config import ModelConfig
from mbt.model.flops import count_flops


def main() -> None:
    late = count_flops(ModelConfig(fusion="late"))
    rows = [("late fusion", late)]
    for lf in (8, 4, 0):
        rows.append((f"bottleneck, Lf={lf}, B=4", count_flops(ModelConfig(fusion_layer=lf))))
    for lf in (8, 4, 0):
        cfg = ModelConfig(fusion="vanilla", fusion_layer=lf)
        rows.append((f"vanilla cross-attention, Lf={lf}", count_flops(cfg)))
    rows.append(
        (
            "shared encoder, Lf=0",
            count_flops(ModelConfig(fusion="shared", fusion_layer=0)),
        )
    )
    print(f"{'regime':34s} {'GFLOPs':>9s} {'vs late':>8s}")
    for name, flops in rows:
        print(f"{name:34s} {flops / 1e9:9.1f} {flops / late:8.4f}")


if __name__ == "__main__":
    main()
