"""The `optidel` command: run, verify, inspect, report, eval, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import config as config_mod

log = logging.getLogger("optidel")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # --log-level is optidel's own; libraries (faiss, ray) only speak up with warnings.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.WARNING if args.quiet else getattr(logging, args.log_level))
    try:
        return args.func(args)
    except (config_mod.ConfigError, *_user_errors()) as exc:
        print(f"optidel: error: {exc}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: printed as one line, no traceback."""
    from ..stages.mae import ProxyCheckpointError
    from ..stages.sam import CheckpointError
    from .inputs import InputError
    from .runner import RunError

    return (InputError, RunError, CheckpointError, ProxyCheckpointError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optidel", description=__doc__)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="distil an image pool into WebDataset shards + manifests")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="image dirs, tar shards, brace patterns, list files")
    run.add_argument("-o", "--out", required=True, help="output directory (local path or fsspec URL)")
    run.add_argument("--config", help="YAML config file")
    run.add_argument("--keep", type=float, help="fraction of the pool to output (default 0.05)")
    run.add_argument("--seed", type=int)
    run.add_argument("--selector", choices=config_mod.selector_choices())
    run.add_argument("--mosaic", type=int, help="patches per output image: 1, 4, 9 or 16")
    run.add_argument("--proposer", choices=config_mod.proposer_choices())
    run.add_argument("--sam-model", choices=["vit_b", "vit_l", "vit_h", "vit_tiny"])
    run.add_argument("--sam-checkpoint")
    run.add_argument("--proxy", help="'self' or an MAE checkpoint file")
    run.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    run.add_argument("--overwrite", action="store_true", default=None, help="replace a non-empty OUT")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    run.set_defaults(func=_run)

    verify = sub.add_parser("verify", help="check every shard against the manifests")
    verify.add_argument("out")
    verify.set_defaults(func=_verify)

    inspect = sub.add_parser("inspect", help="the lineage of one output sample")
    inspect.add_argument("out")
    inspect.add_argument("key")
    inspect.add_argument("--png", help="also draw the mosaic beside its sources to this PNG")
    inspect.set_defaults(func=_inspect)

    report = sub.add_parser("report", help="write an HTML audit report to OUT/report/index.html")
    report.add_argument("out")
    report.add_argument(
        "--max-samples", type=int, help="mosaics on the contact sheet, each with its lineage (default 200)"
    )
    report.set_defaults(func=_report)

    demo = sub.add_parser("demo", help="build a small offline pool and distil it")
    demo.add_argument("out")
    demo.add_argument("--frames", type=int, default=30, help="frames per demo photo")
    demo.set_defaults(func=_demo)

    from ..eval import command as eval_command  # its parser imports no torch

    evaluate = sub.add_parser("eval", help="pre-train on each arm's shards, fine-tune, report mIoU and NormDEL")
    eval_command.add_arguments(evaluate)
    evaluate.set_defaults(func=eval_command.run)
    return parser


def _config(args) -> config_mod.Config:
    return config_mod.load(
        args.config,
        overrides={
            "keep": args.keep,
            "seed": args.seed,
            "selector": args.selector,
            "mosaic": args.mosaic,
            "overwrite": args.overwrite,
            "propose.proposer": args.proposer,
            "propose.sam_model": args.sam_model,
            "propose.sam_checkpoint": args.sam_checkpoint,
            "score.proxy": args.proxy,
            "ray.address": args.ray_address,
        },
        sets=args.sets,
    )


def _run(args) -> int:
    from .runner import run

    info = run(args.inputs, args.out, _config(args))
    _print_summary(args.out, info)
    return 0


def _print_summary(out: str, info: dict) -> None:
    counts = info["counts"]
    rows = [("sources", counts["sources"])]
    rows += [(f"  {status}", n) for status, n in counts["by_status"].items()]
    rows += [
        ("candidate patches", counts["candidate_patches"]),
        ("selected patches", counts["selected_patches"]),
        ("samples", f"{counts['samples']} of {counts['samples_target']}"),
        ("shards", counts["shards"]),
    ]
    rows += [(f"time {stage}", f"{seconds:.1f} s") for stage, seconds in info["timings_s"].items()]
    for key, value in info["v_information"].items():
        rows.append((key, f"{value:.4f}" if isinstance(value, float) else value))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    print(f"shards:    {out.rstrip('/')}/shards/ (index.json)\nmanifests: {out.rstrip('/')}/manifests/\nrun:       {out.rstrip('/')}/run.json")


def _verify(args) -> int:
    from ..manifests.verify import verify

    report = verify(args.out)
    print(report.summary)
    for problem in report.problems[:20]:
        print(f"  {problem}")
    return 0 if report.ok else 1


def _inspect(args) -> int:
    from ..manifests import lineage

    try:
        info = lineage.lineage(args.out, args.key)
    except KeyError as exc:
        print(f"optidel: error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(lineage.format_lineage(info))
    if args.png:
        lineage.draw_lineage(args.out, args.key, args.png)
        print(f"drawn: {args.png}")
    return 0


def _report(args) -> int:
    from ..manifests.report import ReportError, build_report

    limit = {} if args.max_samples is None else {"max_samples": args.max_samples}
    try:
        index = build_report(args.out, **limit)
    except ReportError as exc:
        print(f"optidel: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {index}")
    return 0


def _demo(args) -> int:
    from .demo import build_pool
    from .runner import run

    out = Path(args.out)
    pool = out / "pool"
    build_pool(pool, frames_per_photo=args.frames)
    info = run([str(pool)], str(out / "distilled"), config_mod.load(overrides={"overwrite": True}))
    _print_summary(str(out / "distilled"), info)
    print(json.dumps({"pool": str(pool), "output": str(out / "distilled")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
