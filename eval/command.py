"""`optidel eval`'s arguments and entry point. Kept apart from harness.py so that building the
CLI's parser imports no torch. Every default comes from settings.EvalConfig."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields, replace
from pathlib import Path

from .labeled import SPLITS, EvalError
from .settings import EvalConfig

DEFAULTS_NOTE = "Defaults are CPU-sized (2 cores, 64 px); on a GPU raise --size, --steps and --model"
_DEFAULT = EvalConfig()

# (flag, help) for every EvalConfig field set from the command line under its own name.
_SETTINGS = {
    "seeds": "seeds 0..N-1, each fixing init, masks and data order for every arm",
    "split": "the held-out split reported: choose settings on validation, run test once at the end "
    "(default validation; test with --test-only)",
    "test_fraction": "last fraction of --labeled by sorted name that tests",
    "validation_fraction": "last fraction of the non-test pairs by sorted name that validates",
    "size": "image side for pre-training and evaluation",
    "model": "MAE shape",
    "steps": "pre-training optimizer steps, equal for every arm",
    "batch_size": "pre-training batch",
    "lr": "pre-training peak learning rate",
    "probe_iterations": "L-BFGS iterations of the linear probe (the primary metric)",
    "probe_l2": "the probe's L2 penalty on its weights",
    "finetune_every": "the low-label fine-tune (secondary metric) uses every N-th train pair",
    "finetune_seeds": "the first N seeds also run the fine-tune (0: none)",
    "finetune_steps": "fine-tuning optimizer steps",
    "finetune_batch_size": "fine-tuning batch",
    "finetune_lr": "fine-tuning peak learning rate",
    "alpha": "NormDEL's alpha",
    "device": "where models run",
    "threads": "torch CPU threads per process (0: torch's own choice; 1 on busy shared CPUs)",
    "jobs": "units run side by side in this many processes (one torch thread each unless --threads)",
    "pool": "a short description of the pre-training pool for the table (default: the arms' pool sizes)",
}
_CHOICES = {"split": list(SPLITS), "model": ["tiny", "small", "base"], "device": ["auto", "cpu", "cuda"]}
_AT_LEAST_ONE = ("seeds", "size", "steps", "batch_size", "probe_iterations", "finetune_every", "finetune_steps",
                 "finetune_batch_size", "jobs")


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
    for name, text in _SETTINGS.items():
        default = getattr(_DEFAULT, name)
        shown = f" (default {default})" if name not in ("split", "pool") else ""
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            # --split left unset follows --test-only: an external test set is there to be tested on.
            default=None if name == "split" else default,
            choices=_CHOICES.get(name),
            help=text + shown,
        )
    parser.add_argument(
        "--scratch", action=argparse.BooleanOptionalAction, default=_DEFAULT.scratch,
        help="the control row: the same probe and fine-tune on random weights (default on)",
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
    for flag in _AT_LEAST_ONE:
        if getattr(args, flag) < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.threads < 0 or args.finetune_seeds < 0 or args.probe_l2 < 0:
        raise EvalError("--threads, --finetune-seeds and --probe-l2 must be 0 or more")

    from .harness import evaluate
    from .pretrain import model_spec
    from .report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG

    try:
        model_spec(args.model, args.size)
    except ValueError as exc:  # e.g. a size that is not a multiple of the model's patch
        raise EvalError(f"--size {args.size} / --model {args.model}: {exc}") from exc

    if args.split is None:
        args.split = "test" if args.test_only else "validation"
    names = {f.name for f in fields(EvalConfig)}
    config = replace(_DEFAULT, **{k: v for k, v in vars(args).items() if k in names})
    evaluate(arms, args.labeled, args.out, config, args.test_only, args.encoders)
    print((Path(args.out) / RESULTS_MD).read_text())
    print(f"results: {args.out}/{RESULTS_JSON}, {RESULTS_MD}, {RESULTS_PNG}")
    return 0
