"""`optidel eval`'s arguments and entry point. Kept apart from harness.py so that building the
CLI's parser imports no torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .labeled import EvalError

DEFAULTS_NOTE = "Defaults are CPU-sized (2 cores, 64 px); on a GPU raise --size, --steps and --model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .metrics import DEFAULT_ALPHA

    parser.description = (
        "Pre-train a small MAE on each arm's shards for the same number of optimizer steps, "
        "fine-tune a segmenter on a labeled set of images/ + masks/, report mIoU and NormDEL. " + DEFAULTS_NOTE
    )
    parser.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="NAME=OUT",
        help="an `optidel run` output to pre-train on (repeat)",
    )
    parser.add_argument(
        "--labeled",
        required=True,
        metavar="DIR",
        help="folder with images/ and masks/ (same names; mask >= 128 is foreground)",
    )
    parser.add_argument(
        "--out", metavar="RESULTS_DIR", help="where results.json, results.md, results.png and units/ go"
    )
    parser.add_argument(
        "--test-only", metavar="DIR", help="test on all of this labeled folder and fine-tune on all of --labeled"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="last fraction of --labeled by sorted name that tests (default 0.2)",
    )
    parser.add_argument(
        "--write-pool-list",
        metavar="FILE",
        help="only write the non-test image paths of --labeled, an `optidel run` list file",
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds 0..N-1, each a pre-training + fine-tuning seed (default 3)"
    )
    parser.add_argument("--size", type=int, default=64, help="image side for pre-training and fine-tuning (default 64)")
    parser.add_argument("--model", default="tiny", choices=["tiny", "small", "base"], help="MAE shape (default tiny)")
    parser.add_argument(
        "--steps", type=int, default=200, help="pre-training optimizer steps, equal for every arm (default 200)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="pre-training batch (default 64)")
    parser.add_argument("--lr", type=float, default=1.5e-3, help="pre-training peak learning rate (default 1.5e-3)")
    parser.add_argument("--finetune-steps", type=int, default=300, help="fine-tuning optimizer steps (default 300)")
    parser.add_argument("--finetune-batch-size", type=int, default=32, help="fine-tuning batch (default 32)")
    parser.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning peak learning rate (default 5e-4)")
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"NormDEL's alpha (default {DEFAULT_ALPHA:g})"
    )
    parser.add_argument(
        "--scratch", action="store_true", help="add a control row: the same fine-tune from random weights"
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's own choice; 1 on busy shared CPUs)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except EvalError as exc:
        print(f"optidel: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from . import labeled

    if args.write_pool_list:
        n = labeled.write_pool_list(args.labeled, args.test_fraction, args.write_pool_list, args.test_only)
        print(f"wrote {n} pre-training pool paths (no test image) to {args.write_pool_list}")
        return 0
    if not args.out:
        raise EvalError("--out RESULTS_DIR is required (unless --write-pool-list)")
    arms = []
    for item in args.arm:
        name, sep, out = item.partition("=")
        if not sep or not name or not out:
            raise EvalError(f"--arm {item!r}: expected NAME=OUT")
        arms.append((name, out))
    for flag in ("seeds", "size", "steps", "batch_size", "finetune_steps", "finetune_batch_size"):
        if getattr(args, flag) < 1:
            raise EvalError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.threads < 0:
        raise EvalError("--threads must be 0 (torch's default) or more")

    from .harness import EvalConfig, evaluate
    from .pretrain import model_spec
    from .report import RESULTS_JSON, RESULTS_MD, RESULTS_PNG

    try:
        model_spec(args.model, args.size)
    except ValueError as exc:  # e.g. a size that is not a multiple of the model's patch
        raise EvalError(f"--size {args.size} / --model {args.model}: {exc}") from exc

    config = EvalConfig(
        size=args.size,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        finetune_steps=args.finetune_steps,
        finetune_batch_size=args.finetune_batch_size,
        finetune_lr=args.finetune_lr,
        seeds=args.seeds,
        alpha=args.alpha,
        test_fraction=args.test_fraction,
        scratch=args.scratch,
        device=args.device,
        threads=args.threads,
    )
    evaluate(arms, args.labeled, args.out, config, args.test_only)
    print((Path(args.out) / RESULTS_MD).read_text())
    print(f"results: {args.out}/{RESULTS_JSON}, {RESULTS_MD}, {RESULTS_PNG}")
    return 0
