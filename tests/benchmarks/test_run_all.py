"""benchmarks/run_all.py: RESULTS.md keeps what it does not own, other scripts join through
``main(argv) -> dict``, the GPU section says when no GPU ran, and a quick run writes tables."""

from __future__ import annotations

import sys
import textwrap

import pytest
import run_all
import torch

from mbt.runtime import cpu_bf16

ABLATIONS = "## Fusion ablations\n\nWritten by benchmarks/ablation.py: | a | b |\n"


def test_merge_rewrites_only_its_own_sections():
    first = run_all.merge_results(ABLATIONS, {"model": "## Model\n\nold", "gpu": "## GPU\n\nnote"})
    assert first.startswith(run_all.BEGIN)  # the generated part, with its header, comes first
    assert first.rstrip().endswith(ABLATIONS.rstrip())
    assert "rewrites only the text between" in first.split(run_all.END)[0]

    second = run_all.merge_results(first, {"model": "## Model\n\nnew"})
    before, sections, after = run_all.split_results(second)
    assert before == "" and after.strip() == ABLATIONS.strip()
    assert sections["model"] == "## Model\n\nnew" and sections["gpu"] == "## GPU\n\nnote"
    assert second.count(run_all.BEGIN) == 1 and "old" not in second
    # Text someone put above the markers stays too; sections come in their fixed order.
    third = run_all.merge_results("intro\n" + second, {"decode": "## Decode"})
    assert third.startswith("intro\n") and list(run_all.split_results(third)[1]) == [
        "model", "decode", "gpu",
    ]  # fmt: skip


def _fake_module(tmp_path, monkeypatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(run_all.EXTERNAL, "decode", (name, "Fake decoding", ["--x"]))


def test_external_scripts_join_through_main(tmp_path, monkeypatch, capsys):
    _fake_module(tmp_path, monkeypatch, "fake_bench_a", """
        import torch
        def main(argv):
            torch.set_num_threads(1)  # a benchmark may pin its threads
            print("ms/item  12.5", argv)
            return {"ms": 12.5}
    """)  # fmt: skip
    threads = torch.get_num_threads()
    text = run_all.external_section("decode", ["--x"])
    assert text.startswith("## Fake decoding") and "Machine: " in text
    assert "`python benchmarks/fake_bench_a.py --x` printed:" in text
    assert "ms/item  12.5 ['--x']" in text and "1 torch threads" in text
    assert torch.get_num_threads() == threads  # restored for the next section
    assert "ms/item  12.5" in capsys.readouterr().out  # echoed while it runs

    _fake_module(tmp_path, monkeypatch, "fake_bench_b", """
        def main(argv):
            return {"ms": 3.0}
        def markdown(result):
            return f"| ms |\\n|---|\\n| {result['ms']} |"
    """)  # fmt: skip
    assert run_all.external_section("decode", []).endswith("| ms |\n|---|\n| 3.0 |")


def test_a_missing_script_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(run_all.EXTERNAL, "cache", ("no_such_bench", "Cache", None))
    assert "Skipped: `benchmarks/no_such_bench.py` is not in this checkout" in (
        run_all.external_section("cache", [])
    )


def test_a_failing_script_becomes_a_note(tmp_path, monkeypatch):
    _fake_module(tmp_path, monkeypatch, "fake_bench_c", """
        import argparse
        def main(argv):
            argparse.ArgumentParser().parse_args(["--x"])  # unknown: SystemExit(2)
    """)  # fmt: skip
    args = run_all.parse_args(["--only", "decode"])
    assert "Failed: `SystemExit: 2`" in run_all.run_section("decode", args, None)


def test_gpu_section_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "No GPU was available to this task" in run_all.gpu_section(None, quick=True)
    measured = "## GPU check\n\ngpu_check measured (...):\n\n```text\n900 clips/s\n```"
    assert run_all.gpu_section(measured, quick=True) == measured  # numbers from a GPU stay


def test_quick_run_writes_the_model_table(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text(ABLATIONS)
    run_all.main(["--quick", "--only", "model,gpu,cache", "--repeats", "1", "--out", str(out)])
    text = out.read_text()
    assert text.rstrip().endswith(ABLATIONS.rstrip())
    model = run_all.split_results(text)[1]["model"]
    assert "Machine: " in model and "capability" in model and "bf16" in model
    rows = [line for line in model.splitlines() if line.startswith("| ") and "fp32" in line]
    assert [r.split(" | ")[0][2:] for r in rows] == list(run_all.REGIMES)
    late = next(r for r in rows if r.startswith("| late fusion"))
    assert late.split(" | ")[4] == "1.000"  # the reference of the "vs late fusion" column
    bf16 = [line.split(" | ")[0][2:] for line in model.splitlines() if " | bf16 | " in line]
    assert bf16 == (list(run_all.BF16_REGIMES) if cpu_bf16().native else [])
    assert "Skipped by --quick" in text


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "model,nope"])
