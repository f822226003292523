"""`optidel eval`'s arguments and entry point. Kept apart from harness.py so that building the
CLI's parser imports no torch. Every setting's flag, default, choices, range and help come from
settings.EvalConfig."""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path

from pydantic import ValidationError

from .labeled import EvalError
from .settings import EvalConfig

DEFAULTS_NOTE = "Defaults are CPU-sized (2 cores, 64 px); on a GPU raise --size, --steps and --model"
_DEFAULT = EvalConfig()
_FIELDS = EvalConfig.__pydantic_fields__
_NOT_FLAGS = ("mask_ratio",)  # fixed for the reference tables
_NO_DEFAULT_SHOWN = ("split", "pool", "scratch")  # their help says it


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pre-train a small MAE on each arm's shards for the same number of optimizer steps, then "
        "score its frozen encoder with a linear probe (primary) and a low-label fine-tune (secondary) "
        "on a labeled set of images/ + masks/; report mIoU, paired differences with bootstrap 95% "
        "intervals against the random, full and scratch arms, and NormDEL. " + DEFAULTS_NOTE
    )
    parser.add_argument(
        "--arm", action="append", default=[], metavar="NAME=OUT", help="an `optidel run` output to pre-train on (repeat)"
    )
    parser.add_argument(
        "--labeled", required=True, metavar="DIR",
        help="folder with images/ and masks/ (same names; mask >= 128 is foreground)",
    )
    parser.add_argument(
        "--out", metavar="RESULTS_DIR", help="where results.json, results.md, results.png and units/ go"
    )
    parser.add_argument(
        "--encoders", metavar="DIR",
        help="cache of pre-trained encoders (default RESULTS_DIR/encoders); share it between the "
        "validation and the test run so both rank the same networks",
    )
    parser.add_argument(
        "--test-only", metavar="DIR", help="test on all of this labeled folder; --labeled splits into train and validation"
    )
    parser.add_argument(
        "--write-pool-list", metavar="FILE",
        help="only write the train split's image paths (no validation or test image), an `optidel run` list file",
    )
    parser.add_argument(
        "--write-video-pool", metavar="DIR",
        help="only write the train split as video-like clips of JPEG frames (seeded camera paths) into DIR",
    )
    parser.add_argument("--frame-size", type=int, default=192, help="video pool frame side in pixels (default 192)")
    parser.add_argument(
        "--max-clip", type=int, default=16, help="video pool clip lengths are log-uniform on 1..N frames (default 16)"
    )
    for f in fields(EvalConfig):
        if f.name in _NOT_FLAGS:
            continue
        default, info = getattr(_DEFAULT, f.name), _FIELDS[f.name]
        help_text = info.description + ("" if f.name in _NO_DEFAULT_SHOWN else f" (default {default})")
        if isinstance(default, bool):
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
        parser.add_argument(
            _flag(f.name),
            type=type(default),
            # --split left unset follows --test-only: an external test set is there to be tested on.
            default=None if f.name == "split" else default,
            choices=choices,
            help=help_text,
        )


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except EvalError as exc:
        print(f"optidel: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from . import labeled

    if args.write_pool_list or args.write_video_pool:
        split = labeled.split(args.labeled, args.test_fraction, args.validation_fraction, args.test_only)
        if args.write_pool_list:
            n = labeled.write_pool_list(split, args.write_pool_list)
            print(f"wrote {n} pre-training pool paths (train split only) to {args.write_pool_list}")
        if args.write_video_pool:
            from .pools import write_video_pool

            if args.frame_size < 8 or args.max_clip < 1:
                raise EvalError("--frame-size must be at least 8 and --max-clip at least 1")
            n = write_video_pool(split.train, args.write_video_pool, args.frame_size, args.max_clip, seed=0)
            print(f"wrote {n} video frames from {len(split.train)} train images to {args.write_video_pool}")
        return 0
    if not args.out:
        raise EvalError("--out RESULTS_DIR is required (unless --write-pool-list / --write-video-pool)")
    arms = []
    for item in args.arm:
        name, sep, out = item.partition("=")
        if not sep or not name or not out:
            raise EvalError(f"--arm {item!r}: expected NAME=OUT")
        arms.append((name, out))
    from .harness import evaluate
    from .pretrain import model_spec
    from .report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG

    if args.split is None:
        args.split = "test" if args.test_only else "validation"
    config = settings_from(args)
    try:
        model_spec(args.model, args.size)
    except ValueError as exc:  # e.g. a size that is not a multiple of the model's patch
        raise EvalError(f"--size {args.size} / --model {args.model}: {exc}") from exc

    evaluate(arms, args.labeled, args.out, config, args.test_only, args.encoders)
    print((Path(args.out) / RESULTS_MD).read_text())
    print(f"results: {args.out}/{RESULTS_JSON}, {RESULTS_MD}, {RESULTS_PNG}")
    return 0


def settings_from(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig the flags give; an out-of-range value is an EvalError naming its flag."""
    try:
        return EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig) if f.name not in _NOT_FLAGS})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise EvalError(f"{_flag(str(err['loc'][0]))} {err['input']!r}: {err['msg']}") from None
