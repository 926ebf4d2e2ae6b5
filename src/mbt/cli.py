"""Command line: ``mbt <command> ...`` (also ``python -m mbt``).

The CLI only parses arguments and dispatches into importable functions (``mbt.training.loop.
train``, ``mbt.training.evaluate.evaluate_run``, ``mbt.predict.predict`` ...). User errors
(bad config, missing file, unreadable media, a full disk) print ``mbt: error: <message>`` on
one line and exit with status 2; ``--debug`` (before or after the command name) shows the
traceback instead. ``key.sub=value`` overrides may come anywhere after the command name.

The command line answers at once: parsing needs only argparse and the config, and each handler
imports what its command runs (torch, timm, PyAV, the data stack) after its arguments and
config have been checked, so ``mbt --help``, ``mbt train --help`` and a config error take a
fraction of a second (``tests/test_cli_imports.py`` checks that nothing heavy is imported).

Adding a command: in your module write ``register(sub)``, which adds the command with
``sub.add_parser(name, ...)`` and ``set_defaults(func=handler)`` (``handler(args) -> int |
None``), and list the module in :data:`COMMAND_MODULES`; keep its top-level imports light
(import what a command runs inside its handler). :func:`build_parser` gives every command its
``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mbt.config import PRECISIONS, load_config

# Modules that contribute subcommands through ``register(sub)``, in help order.
COMMAND_MODULES: tuple[str, ...] = ("mbt.cli", "mbt.commands_model")

# Errors a user causes or can fix (bad config, missing file, unreadable media, a full disk):
# one line, status 2. MediaError subclasses ValueError today; listed in case that changes.
# Named by (module, class), not imported: an exception of a class whose module was never
# imported cannot have been raised, and importing mbt.data.video here would load PyAV and torch
# before the command line is parsed.
USER_ERRORS: tuple[tuple[str, str], ...] = (
    ("builtins", "ValueError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "NotADirectoryError"),
    ("mbt.data.video", "MediaError"),
    ("mbt.files", "DiskFullError"),
    ("mbt.errors", "MbtError"),
)

OVERRIDES = dict(nargs="*", metavar="key.sub=value", help="config overrides, applied last")


class _Exit(Exception):
    """A handled failure with its own exit status and one-line message."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# One command each: register (arguments) and handle (parse -> call an importable function)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model", description="Train MBT on a data set.")
    p.add_argument("--config", help="config YAML file or preset name (see mbt/configs)")
    p.add_argument("--data", help="data set folder or .zip archive (overrides data.root)")
    p.add_argument("--out", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    p.add_argument("overrides", **OVERRIDES)
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.config:
        raise ValueError("give --config for a new run or --resume RUN_DIR, not both")
    if args.resume:
        from mbt.training.rundir import load_run_config

        cfg = load_run_config(args.resume, args.overrides)
        out = Path(args.resume)
    else:
        if not args.config:
            raise ValueError("--config CONFIG.yaml (or a preset name such as demo) is required")
        cfg = load_config(args.config, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    from mbt.training.engine import NonFiniteLossError
    from mbt.training.loop import train

    try:
        train(cfg, args.data, out, resume=bool(args.resume))
    except NonFiniteLossError as e:
        raise _Exit(str(e), 1) from None
    return 0


def _add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision", choices=list(PRECISIONS), default=None,
        help="autocast precision (default: the run's train.precision, resolved for this "
        "machine; auto for a model folder without its run)",
    )  # fmt: skip


def _register_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="evaluate a run (multi-view, per modality)",
        description="Multi-view evaluation of a trained run; writes RUN_DIR/eval.json.",
    )  # fmt: skip
    p.add_argument("run_dir", help="run directory written by mbt train")
    p.add_argument("--data", help="data set folder or .zip (default: the run's data.root)")
    p.add_argument("--split", choices=["val", "test"], default="val")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    p.add_argument("--device", default="auto")
    _add_precision(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mbt.training.evaluate import evaluate_run, format_report

    result = evaluate_run(
        args.run_dir, data=args.data, split=args.split, checkpoint=args.checkpoint,
        batch_size=args.batch_size, device=args.device, precision=args.precision,
    )  # fmt: skip
    print(format_report(result))
    return 0


def _register_predict(sub: argparse._SubParsersAction) -> None:
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
    _add_precision(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    from mbt.predict import format_prediction, predict

    result = predict(
        args.source, args.video, audio=args.audio, top_k=args.top_k,
        checkpoint=args.checkpoint, device=args.device, precision=args.precision,
    )  # fmt: skip
    print(json.dumps(result, indent=1) if args.json else format_prediction(result))
    return 0


def _register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate demo data, train, evaluate (a few minutes on CPU)",
        description="Demo data -> cache -> train -> evaluate, in two stages: configs/demo.yaml "
        "on the additive demo classes, then configs/demo_pairing.yaml (MBT, late fusion, audio "
        "only, video only) on the interaction classes only MBT can solve.",
    )  # fmt: skip
    p.add_argument("--out", default="runs/demo", help="folder for data, cache and runs")
    p.add_argument("--seed", type=int, default=0, help="demo data seed")
    p.add_argument(
        "--baselines", action="store_true",
        help="also train the audio-only and video-only models on the additive classes",
    )  # fmt: skip
    p.add_argument("overrides", **OVERRIDES)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from mbt.demo import run_demo

    run_demo(args.out, seed=args.seed, baselines=args.baselines, overrides=args.overrides)
    return 0


def _register_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="decode a data set once into a cache",
        description="Decode every clip once into a lean cache: the frames the config's sampling "
        "needs as JPEG, the whole track's log-mel (read with data.cache=CACHE).",
    )  # fmt: skip
    p.add_argument("data", help="data set folder, or a .zip archive (unpacked into the cache)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--config", help="config whose model/data settings fix the tensor sizes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per clip before skipping")
    p.add_argument(
        "--retry-failed", action="store_true",
        help="decode again the files that failed in an earlier run (e.g. a too short --timeout)",
    )  # fmt: skip
    p.add_argument(
        "--fps", type=float, default=None,
        help="store at most this many frames per second (default: what data.sampling needs)",
    )  # fmt: skip
    p.add_argument(
        "--jpeg-quality", type=int, default=None,
        help="JPEG quality 1-100 (default: mbt.data.cache.JPEG_QUALITY)",
    )  # fmt: skip
    p.add_argument("--wait", action="store_true", help="wait for a prepare run writing OUT")
    p.add_argument(
        "--shards", action="store_true",
        help="also write OUT/shards: WebDataset tar shards per split, read streaming by training "
        "with data.cache=OUT/shards",
    )  # fmt: skip
    p.add_argument(
        "--clips-per-shard", type=int, default=None,
        help="clips per tar shard (default: mbt.data.shards.CLIPS_PER_SHARD)",
    )  # fmt: skip
    p.add_argument("overrides", **OVERRIDES)
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    from mbt.data.archive import open_data_path
    from mbt.data.cache import JPEG_QUALITY, prepare
    from mbt.data.shards import CLIPS_PER_SHARD, write_shards

    data = open_data_path(args.data, into=args.out)  # a .zip is unpacked inside the cache folder
    quality = JPEG_QUALITY if args.jpeg_quality is None else args.jpeg_quality
    prepare(
        data, args.out, cfg.data, cfg.model, workers=args.workers, timeout=args.timeout,
        retry_failed=args.retry_failed, fps=args.fps, jpeg_quality=quality, wait=args.wait,
    )  # fmt: skip
    if args.shards:
        per_shard = CLIPS_PER_SHARD if args.clips_per_shard is None else args.clips_per_shard
        print(write_shards(args.out, clips_per_shard=per_shard, wait=args.wait).format())
    return 0


def _register_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the demo data set")
    p.add_argument("out", help="folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_demo_data)


def _cmd_demo_data(args: argparse.Namespace) -> int:
    from mbt.data.demo import make_demo_data

    out = make_demo_data(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"demo data written to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The core commands: train, evaluate, predict, demo, prepare, demo-data."""
    _register_train(sub)
    _register_evaluate(sub)
    _register_predict(sub)
    _register_demo(sub)
    _register_prepare(sub)
    _register_demo_data(sub)


# ---------------------------------------------------------------------------------------------


def _add_debug(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a command's parser leaves args.debug alone unless --debug follows the command,
    # so `mbt --debug train` is not undone by the train parser's default.
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help="show tracebacks instead of one-line errors",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The ``mbt`` parser with every command of :data:`COMMAND_MODULES`, each with --debug."""
    parser = argparse.ArgumentParser(
        prog="mbt", description="Multimodal Bottleneck Transformer: audio-visual classification."
    )
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in {id(p): p for p in sub.choices.values()}.values():  # aliases share a parser
        _add_debug(command)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with ``key=value`` overrides accepted anywhere after the command.

    argparse fills a ``nargs="*"`` positional at its first chance (empty, when an option comes
    next), so ``prepare DATA --out X key=val`` would leave ``key=val`` unrecognised; for a
    command that takes overrides, such leftovers join them, in command-line order.
    """
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(_is_override(a) for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _is_override(text: str) -> bool:
    return "=" in text and not text.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mbt`` script; returns the exit status."""
    args = parse_args(build_parser(), argv)
    debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except _Exit as e:
        if debug:
            raise
        print(f"mbt: error: {e}", file=sys.stderr)
        return e.status
    except Exception as e:
        if debug or not _is_user_error(e):
            raise
        print(f"mbt: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mbt: interrupted", file=sys.stderr)
        return 130


def _is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is one of :data:`USER_ERRORS` (classes of modules never imported: no)."""
    for module, name in USER_ERRORS:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(e, getattr(loaded, name)):
            return True
    return False


def _one_line(e: BaseException) -> str:
    """The first line of the message, naming the file of a FileNotFoundError."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, FileNotFoundError) and e.filename and str(e.filename) not in msg:
        msg = f"{e.filename}: {msg}"
    return msg


if __name__ == "__main__":
    sys.exit(main())
