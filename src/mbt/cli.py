"""Command line: ``mbt <command> ...`` (also ``python -m mbt``).

The CLI only parses arguments and dispatches into importable functions (``mbt.training.loop.
train``, ``mbt.training.evaluate.evaluate_run``, ``mbt.predict.predict`` ...). User errors
(bad config, missing file, unreadable media) print ``mbt: error: <message>`` on one line and
exit with status 2; ``--debug`` shows the traceback instead.

Adding a command: write ``register(subparsers)`` in your module (add a parser with
``subparsers.add_parser(...)`` and ``set_defaults(func=handler)``, where ``handler(args) -> int | None``)
and list the module in :data:`COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# Modules that contribute subcommands through ``register(subparsers)``, in help order.
# Add e.g. "mbt.model.convert" (convert), "mbt.export" (export), "mbt.explain" (explain) here.
COMMAND_MODULES: tuple[str, ...] = ("mbt.cli", "mbt.commands_model")


class _Exit(Exception):
    """A handled failure with its own exit status and one-line message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)
    try:  # MediaError subclasses ValueError today; listed in case that changes
        from mbt.data.video import MediaError

        errors += (MediaError,)
    except ImportError:
        pass
    return errors


# ---------------------------------------------------------------------------------------------
# handlers: parse -> call an importable function -> print


def _cmd_train(args: argparse.Namespace) -> int:
    from mbt.config import load_config
    from mbt.training.loop import NonFiniteLossError, load_run_config, train

    if args.resume and args.config:
        raise ValueError("give --config for a new run or --resume RUN_DIR, not both")
    if args.resume:
        cfg = load_run_config(args.resume, args.overrides)
        out = Path(args.resume)
    else:
        if not args.config:
            raise ValueError("--config CONFIG.yaml (or a preset name such as demo) is required")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        train(cfg, args.data, out, resume=bool(args.resume))
    except NonFiniteLossError as e:
        raise _Exit(str(e), 1) from None
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mbt.training.evaluate import evaluate_run, format_report

    result = evaluate_run(
        args.run_dir, data=args.data, split=args.split, checkpoint=args.checkpoint,
        batch_size=args.batch_size, device=args.device,
    )  # fmt: skip
    print(format_report(result))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from mbt.predict import format_prediction, predict

    result = predict(
        args.source, args.video, audio=args.audio, top_k=args.top_k,
        checkpoint=args.checkpoint, device=args.device,
    )  # fmt: skip
    print(json.dumps(result, indent=1) if args.json else format_prediction(result))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mbt.demo import run_demo

    run_demo(args.out, seed=args.seed, baselines=args.baselines, overrides=args.overrides)
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from mbt.config import load_config
    from mbt.data.cache import prepare

    cfg = load_config(args.config, args.overrides)
    prepare(args.data, args.out, cfg.data, cfg.model, workers=args.workers, timeout=args.timeout)
    return 0


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from mbt.data.demo import make_demo_data

    out = make_demo_data(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"demo data written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The core commands: train, evaluate, predict, demo, prepare, demo-data."""
    overrides = dict(nargs="*", metavar="key.sub=value", help="config overrides, applied last")

    p = sub.add_parser("train", help="train a model", description="Train MBT on a data set.")
    p.add_argument("--config", help="config YAML file or preset name (see mbt/configs)")
    p.add_argument("--data", help="data set folder (overrides data.root)")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate", help="evaluate a run (multi-view, per modality)",
        description="Multi-view evaluation of a trained run; writes RUN_DIR/eval.json.",
    )  # fmt: skip
    p.add_argument("run_dir", help="run directory written by mbt train")
    p.add_argument("--data", help="data set folder (default: the run's data.root)")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "predict", help="classify a video file",
        description="Ranked labels for one video (audio from its own track unless --audio).",
    )  # fmt: skip
    p.add_argument("source", help="run directory, checkpoint folder or its model.safetensors")
    p.add_argument("video", help="video file")
    p.add_argument("--audio", help="audio file to use instead of the video's own track")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "demo", help="generate demo data, train, evaluate (a few minutes on CPU)",
        description="Demo data -> cache -> train configs/demo.yaml -> evaluate.",
    )  # fmt: skip
    p.add_argument("--out", default="runs/demo", help="folder for data, cache and runs")
    p.add_argument("--seed", type=int, default=0, help="demo data seed")
    p.add_argument(
        "--baselines", action="store_true",
        help="also train the audio-only and video-only models for comparison",
    )  # fmt: skip
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "prepare", help="decode a data set once into a cache",
        description="Decode every clip once into fixed-size tensors (read with data.cache=CACHE).",
    )  # fmt: skip
    p.add_argument("data", help="data set folder")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--config", help="config whose model/data settings fix the tensor sizes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per clip before skipping")
    p.add_argument("overrides", **overrides)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("demo-data", help="write the demo data set")
    p.add_argument("out", help="folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_demo_data)


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``mbt`` parser with every command of :data:`COMMAND_MODULES`."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="mbt", parents=[debug],
        description="Multimodal Bottleneck Transformer: audio-visual classification.",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    original = sub.add_parser

    def add_parser(name: str, **kwargs):  # every command accepts --debug after its name too
        kwargs["parents"] = [*kwargs.get("parents", []), debug]
        return original(name, **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbt`` script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except _Exit as e:
        if debug:
            raise
        print(f"mbt: error: {e}", file=sys.stderr)
        return e.status
    except _user_errors() as e:
        if debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"mbt: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
