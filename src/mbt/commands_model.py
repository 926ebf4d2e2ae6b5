"""CLI commands around models: ``convert scenic|ast``, ``export onnx``, ``explain``.

Each handler parses nothing itself and calls an importable function
(:func:`mbt.model.scenic.convert_scenic`, :func:`mbt.model.ast.convert_ast`,
:func:`mbt.export.export_onnx`, :func:`mbt.explain.explain_clip`); every model source goes
through :func:`mbt.loading.load_model`. The command modules are imported inside the handlers:
they pull in torch, timm, matplotlib (explain) and msgpack (scenic), which parsing the command
line does not need (see :mod:`mbt.cli`).
"""

from __future__ import annotations

import argparse

from mbt.config import DataConfig


def _auto_int(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _converted(convert, labels_path: str | None, *args, **kwargs):
    """Run a converter with the names of ``labels_path`` (see :mod:`mbt.data.labels`) stored
    in ``config.json``; AudioSet names also store ``data.multi_label``."""
    from mbt.data.labels import read_labels

    labels = read_labels(labels_path) if labels_path else None
    if labels is not None:
        kwargs["class_names"] = labels.names
        if labels.multi_label:  # sigmoid scores in predict / evaluate
            kwargs["data"] = DataConfig(multi_label=True)
    try:
        model = convert(*args, **kwargs)
    except ValueError as e:  # config_to_json: the names do not fit the head
        if labels is not None and str(e).startswith("class_names:"):
            raise ValueError(f"{labels.path}: {str(e).removeprefix('class_names: ')}") from None
        raise
    if labels is not None:
        print(labels.describe())
    return model


def _summary(model, out: str) -> str:
    cfg = model.cfg
    n = sum(p.numel() for p in model.parameters())
    return (
        f"converted: {'+'.join(cfg.modalities)}, width {cfg.width}, depth {cfg.depth}, "
        f"{cfg.num_heads} heads, {cfg.num_classes} classes, fusion {cfg.fusion} "
        f"(layer {cfg.fusion_layer}), {n / 1e6:.1f} M parameters -> {out}"
    )


def _cmd_convert_scenic(args: argparse.Namespace) -> int:
    from mbt.model.scenic import convert_scenic

    model = _converted(
        convert_scenic, args.labels, args.checkpoint, args.out_dir,
        fusion_layer=args.fusion_layer, num_classes=args.num_classes,
        audio_frames=args.audio_frames, mel_bins=args.mel_bins, image_size=args.image_size,
    )  # fmt: skip
    print(_summary(model, args.out_dir))
    return 0


def _cmd_convert_ast(args: argparse.Namespace) -> int:
    from mbt.model.ast import convert_ast

    model = _converted(
        convert_ast, args.labels, args.source, args.out_dir, audio_frames=args.audio_frames,
        num_classes=args.num_classes, mel_bins=args.mel_bins, max_length=args.max_length,
        stride=args.stride, num_heads=args.num_heads,
    )  # fmt: skip
    print(_summary(model, args.out_dir))
    print("note: AST's classifier (LayerNorm + Linear) is not carried over; the head is zero")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from mbt.export import check_onnx, export_onnx
    from mbt.loading import load_model

    model = load_model(args.source, args.checkpoint).model
    path = export_onnx(model, args.out, opset=args.opset)
    msg = f"wrote {path}"
    if args.check:
        msg += f" (max |onnxruntime - torch| = {check_onnx(model, path, batch=2):.2e})"
    print(msg)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from mbt.explain import explain_clip

    result = explain_clip(
        args.source, args.video, args.audio, args.out, per_layer=args.per_layer,
        checkpoint=args.checkpoint,
    )  # fmt: skip
    print(f"predicted: {result['prediction']} | fusion layers {result['layers']}")
    for f in result["files"]:
        print(f"  {f}")
    return 0


SOURCE_HELP = "run directory, checkpoint or model folder (save_pretrained / convert), or Hub id"
LABELS_HELP = (
    "class names stored with the weights: AudioSet class_labels_indices.csv, a VGGSound CSV, "
    "classInd.txt, a JSON list, or one name a line"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``convert``, ``export`` and ``explain`` to the ``mbt`` parser."""
    _register_convert(sub)
    _register_export(sub)
    _register_explain(sub)


def _register_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="convert official MBT (scenic) or AST weights",
        description="Convert foreign checkpoints into a model directory (config.json + "
        "model.safetensors) that MBT.from_pretrained and every mbt command read.",
    )  # fmt: skip
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)

    s = kinds.add_parser(
        "scenic", help="a scenic MBT checkpoint (Flax msgpack)",
        description="Read a scenic MBT checkpoint (params or optimizer/target tree); "
        "architecture from the tensor shapes. The fusion layer is not stored in the weights.",
    )  # fmt: skip
    s.add_argument("checkpoint", help="msgpack checkpoint file (checkpoint_<step>)")
    s.add_argument("out_dir", help="model directory to write")
    s.add_argument("--fusion-layer", type=int, required=True,
                   help="the training config's model.fusion_layer (AudioSet MBT: 8)")  # fmt: skip
    s.add_argument("--num-classes", type=_auto_int, default=None, metavar="N|auto",
                   help="check the head size (default auto: read it)")  # fmt: skip
    s.add_argument("--audio-frames", type=int, default=800, help="spectrogram frames T_a")
    s.add_argument("--mel-bins", type=int, default=128, help="mel bins F")
    s.add_argument("--image-size", type=int, default=224, help="frame side in pixels")
    s.add_argument("--labels", "--class-names", dest="labels", metavar="FILE", help=LABELS_HELP)
    s.set_defaults(func=_cmd_convert_scenic)

    a = kinds.add_parser(
        "ast", help="AST weights (HF transformers folder or original .pth)",
        description="Convert an Audio Spectrogram Transformer into an audio-only model. "
        "The head is zero-initialised (AST's LayerNorm + Linear classifier is not carried over).",
    )  # fmt: skip
    a.add_argument("source", help="HF model folder / weights file, or original AST .pth")
    a.add_argument("out_dir", help="model directory to write")
    a.add_argument("--audio-frames", type=int, default=None,
                   help="T_a of the converted model (default: the checkpoint's; the time grid "
                   "is cut from the middle or resized)")  # fmt: skip
    a.add_argument("--num-classes", type=_auto_int, default=None, metavar="N|auto",
                   help="head size (default auto: AST's classifier size)")  # fmt: skip
    a.add_argument("--labels", "--class-names", dest="labels", metavar="FILE", help=LABELS_HELP)
    a.add_argument("--mel-bins", type=int, default=128, help=".pth only: mel bins F")
    a.add_argument("--max-length", type=int, default=1024, help=".pth only: trained T_a")
    a.add_argument("--stride", type=int, default=10, help=".pth only: patch stride")
    a.add_argument("--num-heads", type=int, default=None, help=".pth only: default width / 64")
    a.set_defaults(func=_cmd_convert_ast)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model (ONNX)")
    kinds = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    o = kinds.add_parser(
        "onnx", help="ONNX with a dynamic batch axis",
        description="Inputs video (B, T, 3, H, W) and audio (B, T_a, F), output logits (B, C).",
    )  # fmt: skip
    o.add_argument("source", help=SOURCE_HELP)
    o.add_argument("out", help="output .onnx file")
    o.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run directory")  # fmt: skip
    o.add_argument("--opset", type=int, default=17)
    o.add_argument("--check", action="store_true", help="compare with onnxruntime")
    o.set_defaults(func=_cmd_export_onnx)


def _register_explain(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "explain", help="bottleneck attention figures for one clip",
        description="Where the bottleneck tokens attend at the fusion layers: heat maps over "
        "the sampled frames and over the spectrogram (heads averaged).",
    )  # fmt: skip
    e.add_argument("source", help=SOURCE_HELP)
    e.add_argument("video", help="video file")
    e.add_argument("--audio", help="audio file to use instead of the video's own track")
    e.add_argument("--out", default="explain", help="folder for the PNG files")
    e.add_argument("--per-layer", action="store_true", help="one figure per fusion layer too")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run directory")  # fmt: skip
    e.set_defaults(func=_cmd_explain)
