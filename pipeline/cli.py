"""The `optidel` command: run, verify, inspect, report, eval, demo, config."""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
from pathlib import Path

from .. import __version__
from ..manifests.layout import NotAnOutputError, require_output
from . import config as config_mod
from .inputs import check_inputs

log = logging.getLogger("optidel")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
CONFIG_HINT = "every config key, its default and meaning: `optidel config --defaults`"

# Flags that set one config key each: dotted key -> (flag, argparse options). Their help is the
# key's description in pipeline/config.py, so the two cannot disagree. Registries' choices are
# functions, read when the parser is built: a selector or proposer registered later is listed.
CONFIG_FLAGS: dict[str, tuple[str, dict]] = {
    "keep": ("--keep", {"type": float}),
    "seed": ("--seed", {"type": int}),
    "selector": ("--selector", {"choices": config_mod.selector_choices}),
    "mosaic": ("--mosaic", {"type": int}),
    "propose.proposer": ("--proposer", {"choices": config_mod.proposer_choices}),
    "propose.sam_model": ("--sam-model", {"choices": ["vit_b", "vit_l", "vit_h", "vit_tiny"]}),
    "propose.sam_checkpoint": ("--sam-checkpoint", {"metavar": "FILE"}),
    "score.proxy": ("--proxy", {"metavar": "self|FILE"}),
    "ray.address": ("--ray-address", {"help": "Ray cluster address (default: RAY_ADDRESS, else local)"}),
    "overwrite": ("--overwrite", {"action": "store_true", "default": None}),
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (argparse prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # --log-level is optidel's own; libraries (faiss, ray) only speak up with warnings.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    log.setLevel(_log_level(args))
    try:
        return args.func(args)
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"optidel: error: {exc}", file=sys.stderr)
        return 2


def _log_level(args) -> int:
    if args.quiet:
        return logging.WARNING
    if args.verbose:
        return logging.DEBUG
    return getattr(logging, args.log_level)


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: printed as one line, no traceback."""
    from .inputs import InputError
    from .resume import RunError

    errors = [config_mod.ConfigError, NotAnOutputError, InputError, RunError]
    # The checkpoint errors live in modules that import torch: taken only from a module already
    # imported (one that raised has been), so that an early error does not wait for torch.
    for module, name in (("optidel.stages.sam", "CheckpointError"), ("optidel.stages.mae", "ProxyCheckpointError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _global_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--log-level, --quiet and --verbose, before the command or after it. After it they are
    added with SUPPRESS defaults, so that leaving them out there keeps what came before it."""

    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--log-level", default=default("INFO"), choices=LOG_LEVELS, help="optidel's log level")
    parser.add_argument("--quiet", action="store_true", default=default(False), help="warnings and errors only")
    parser.add_argument("--verbose", action="store_true", default=default(False), help="debug messages too")


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config file (`optidel config --defaults` writes one)")
    for key, (flag, options) in CONFIG_FLAGS.items():
        if callable(options.get("choices")):
            options = {**options, "choices": options["choices"]()}
        if options.get("action") != "store_true" and "choices" not in options:
            options = {"metavar": key.rpartition(".")[2].upper(), **options}
        options = {"dest": key, "help": config_mod.description(key), **options}
        parser.add_argument(flag, **options)
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="set any config key, e.g. --set select.clusters=16 (repeatable; applied last)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optidel", description=__doc__, epilog=CONFIG_HINT)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_flags(parser, defaults=True)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        child = sub.add_parser(name, **kwargs)
        _global_flags(child, defaults=False)
        return child

    run = command("run", help="distil an image pool into WebDataset shards + manifests", epilog=CONFIG_HINT)
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="image dirs, tar shards, brace patterns, list files")
    run.add_argument("-o", "--out", required=True, help="output directory (local path or fsspec URL)")
    _config_flags(run)
    run.set_defaults(func=_run)

    config = command("config", help="print the resolved config as YAML, each key with its meaning")
    config.add_argument("--defaults", action="store_true", help="the defaults, ignoring any file and flags")
    _config_flags(config)
    config.set_defaults(func=_print_config)

    verify = command("verify", help="check every shard against the manifests")
    verify.add_argument("out")
    verify.add_argument(
        "--sources", action="store_true",
        help="also re-read a sample of the sources (video frames re-decoded) and check their pixels against the ids pass 1 recorded",
    )
    verify.add_argument("--sample", type=int, default=None, metavar="N", help="sources re-read by --sources (default 100; 0: all)")
    verify.set_defaults(func=_verify)

    inspect = command("inspect", help="the lineage of one output sample")
    inspect.add_argument("out")
    inspect.add_argument("key")
    inspect.add_argument("--png", help="also draw the mosaic beside its sources to this PNG")
    inspect.set_defaults(func=_inspect)

    report = command("report", help="write an HTML audit report to OUT/report/index.html")
    report.add_argument("out")
    report.add_argument(
        "--max-samples", type=int, help="mosaics on the contact sheet, each with its lineage (default 200)"
    )
    report.set_defaults(func=_report)

    demo = command("demo", help="build a small offline pool and distil it (resumes, or reports it complete)")
    demo.add_argument("out")
    demo.add_argument("--frames", type=int, default=30, help="frames per demo photo")
    _config_flags(demo)  # --overwrite replaces an earlier demo; the rest as for run
    demo.set_defaults(func=_demo)

    from ..eval import command as eval_command  # its parser imports no torch

    evaluate = command("eval", help="pre-train on each arm's shards, fine-tune, report mIoU and NormDEL")
    eval_command.add_arguments(evaluate)
    evaluate.set_defaults(func=eval_command.run)
    return parser


def _config(args) -> config_mod.Config:
    overrides = {key: getattr(args, key) for key in CONFIG_FLAGS}
    flags = {key: flag for key, (flag, _) in CONFIG_FLAGS.items()}
    return config_mod.load(args.config, overrides=overrides, sets=args.sets, flags=flags)


def _print_config(args) -> int:
    print(config_mod.to_yaml(config_mod.load() if args.defaults else _config(args)), end="")
    return 0


def _run(args) -> int:
    config = _config(args)  # before torch and Ray are imported: a typo fails in under a second
    check_inputs(args.inputs)  # and before OUT is created
    from .runner import run

    info = run(args.inputs, args.out, config)
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
    print(f"shards:    {out.rstrip('/')}/shards/ (index: {out.rstrip('/')}/index.json)\nmanifests: {out.rstrip('/')}/manifests/\nrun:       {out.rstrip('/')}/run.json")


def _verify(args) -> int:
    require_output(args.out)  # before the reader's imports: a wrong OUT is told at once
    from ..manifests.verify import verify

    report = verify(args.out)
    print(report.summary)
    for problem in report.problems[:20]:
        print(f"  {problem}")
    if not args.sources:
        return 0 if report.ok else 1
    from ..manifests.source_pixels import DEFAULT_SAMPLE, check_sources

    checked, total, drifted = check_sources(args.out, DEFAULT_SAMPLE if args.sample is None else args.sample)
    if drifted:
        print(f"verify --sources FAILED: {len(drifted)} of {checked} sources re-read ({total} ok in all) differ from pass 1")
    else:
        print(f"verify --sources OK: {checked} of {total} ok sources re-read, every one as pass 1 saw it")
    for problem in drifted[:20]:
        print(f"  {problem}")
    return 0 if report.ok and not drifted else 1


def _inspect(args) -> int:
    require_output(args.out)
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
    require_output(args.out)
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
    config = _config(args)
    from .demo import build_pool
    from .runner import run

    out = Path(args.out)
    pool, distilled = out / "pool", str(out / "distilled")
    if config.overwrite and pool.exists():
        shutil.rmtree(pool)  # --overwrite replaces the whole demo, its pool too
    build_pool(pool, frames_per_photo=args.frames)
    info = run([str(pool)], distilled, config)
    _print_summary(distilled, info)
    print(_next_steps(distilled))
    return 0


def _next_steps(out: str) -> str:
    """What to do with a finished output: verify, inspect a real sample, report."""
    from ..manifests.layout import Output

    samples = Output(out).read_manifest("samples", columns=["sample_key"])
    where = shlex.quote(out)
    lines = ["next:", f"  optidel verify {where}"]
    if samples.num_rows:
        lines.append(f"  optidel inspect {where} {shlex.quote(samples.column(0)[0].as_py())} --png lineage.png")
    lines.append(f"  optidel report {where}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
