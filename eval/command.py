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
        "--labeled", metavar="DIR",
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
    parser.add_argument(
        "--artefacts", type=float, default=0.0, metavar="SHARE",
        help="video pool: the share of frames that carry one endoscopy artefact, with truth.csv beside the frames "
        "(default 0: a clean pool)",
    )
    parser.add_argument(
        "--pool-seed", type=int, default=0, help="video pool: the seed of its camera paths and artefacts (default 0)"
    )
    parser.add_argument(
        "--pool-from", choices=("train", "held-out"), default="train",
        help="video pool: film the train split (a pre-training pool, the default), or the validation and test "
        "images (a composition-only pool that the leak guard refuses to pre-train on)",
    )
    parser.add_argument(
        "--recordings", action="store_true",
        help="video pool: write each clip as one lossless video (FFV1 .mkv, one frame a second) instead of JPEG "
        "frames, so a run knows which frames are one recording (its per-recording cap applies)",
    )
    parser.add_argument(
        "--write-peer-list", metavar="PEER=FILE",
        help="only write the frames a peer keeps from the dirty pool --frames DIR, at optidel's budget, as a list "
        "for `optidel run FILE --selector random --keep 1.0`; PEER: cleanvision, lightly (needs --scored), oracle",
    )
    parser.add_argument("--frames", metavar="DIR", help="the dirty pool that --write-peer-list chooses from")
    parser.add_argument("--keep", type=float, default=0.05, help="--write-peer-list's budget share (default 0.05)")
    parser.add_argument(
        "--composition", action="store_true",
        help="only measure what each arm's selection contains on its dirty pool (its truth.csv): clean and "
        "artefact shares, clip coverage, mean proxy score; no pre-training, no --labeled",
    )
    parser.add_argument(
        "--versus", metavar="NAME",
        help="--composition: also each arm's clean share against this arm's, a paired interval (e.g. an ablation "
        "against the setting it changes)",
    )
    parser.add_argument(
        "--scored", metavar="OUT",
        help="a scored `optidel run` output on the same pool (e.g. the optidel arm): the whole-frame proxy "
        "scores of arms whose selector scores nothing",
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

    if args.composition:
        return _composition(args)
    if args.write_peer_list:
        return _write_peer_list(args)
    if not args.labeled:
        raise EvalError("--labeled DIR is required (unless --composition)")
    if args.write_pool_list or args.write_video_pool:
        split = labeled.split(args.labeled, args.test_fraction, args.validation_fraction, args.test_only)
        if args.write_pool_list:
            n = labeled.write_pool_list(split, args.write_pool_list)
            print(f"wrote {n} pre-training pool paths (train split only) to {args.write_pool_list}")
        if args.write_video_pool:
            _write_video_pool(args, split)
        return 0
    if not args.out:
        raise EvalError("--out RESULTS_DIR is required (unless --write-pool-list / --write-video-pool)")
    arms = _arm_specs(args)
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

    evaluate(arms, args.labeled, args.out, config, args.test_only, args.encoders, args.scored)
    print((Path(args.out) / RESULTS_MD).read_text())
    print(f"results: {args.out}/{RESULTS_JSON}, {RESULTS_MD}, {RESULTS_PNG}")
    return 0


def _arm_specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    arms = []
    for item in args.arm:
        name, sep, out = item.partition("=")
        if not sep or not name or not out:
            raise EvalError(f"--arm {item!r}: expected NAME=OUT")
        arms.append((name, out))
    return arms


def _composition(args: argparse.Namespace) -> int:
    from .composition import evaluate
    from .report import RESULTS_JSON, RESULTS_MD

    if not args.out:
        raise EvalError("--out RESULTS_DIR is required")
    evaluate(_arm_specs(args), args.out, args.scored, args.versus)
    print((Path(args.out) / RESULTS_MD).read_text())
    print(f"results: {args.out}/{RESULTS_JSON}, {RESULTS_MD}")
    return 0


def _write_peer_list(args: argparse.Namespace) -> int:
    from .peers import choose, write_list

    name, sep, path = args.write_peer_list.partition("=")
    if not sep or not path:
        raise EvalError(f"--write-peer-list {args.write_peer_list!r}: expected PEER=FILE")
    if not args.frames:
        raise EvalError("--write-peer-list needs --frames DIR, the dirty pool to choose from")
    if not 0.0 < args.keep <= 1.0:
        raise EvalError(f"--keep {args.keep}: a share of the pool, above 0 and at most 1")
    chosen = choose(name, args.frames, args.keep, 0, args.scored)  # seed 0, as `optidel run`'s default
    write_list(chosen, path)
    print(f"wrote the {len(chosen)} frames {name} keeps from {args.frames} to {path}")
    return 0


def _write_video_pool(args: argparse.Namespace, split) -> None:
    if args.frame_size < 8 or args.max_clip < 1:
        raise EvalError("--frame-size must be at least 8 and --max-clip at least 1")
    if not 0.0 <= args.artefacts <= 1.0:
        raise EvalError(f"--artefacts {args.artefacts}: a share of frames, from 0 to 1")
    pairs = split.train if args.pool_from == "train" else split.validation + split.test
    what = f"{len(pairs)} {'train' if args.pool_from == 'train' else 'validation and test'} images"
    if args.artefacts == 0.0:
        from .pools import write_video_pool

        n = write_video_pool(pairs, args.write_video_pool, args.frame_size, args.max_clip, seed=args.pool_seed)
        print(f"wrote {n} video frames from {what} to {args.write_video_pool}{_as_recordings(args)}")
        return
    from .dirty_pool import TRUTH_CSV, write_dirty_video_pool

    truth = write_dirty_video_pool(
        pairs, args.write_video_pool, args.frame_size, args.max_clip, args.pool_seed, args.artefacts
    )
    dirty = sum(row.kind != "clean" for row in truth)
    frozen = sum(bool(row.frozen_of) for row in truth)
    print(
        f"wrote {len(truth)} video frames from {what} to {args.write_video_pool}: {dirty} with an artefact, "
        f"{frozen} frozen repeats; truth in {TRUTH_CSV}{_as_recordings(args)}"
    )


def _as_recordings(args: argparse.Namespace) -> str:
    """With --recordings, turn the pool's clips into videos; the words that say so."""
    if not args.recordings:
        return ""
    from .recordings import encode_recordings

    return f", as {encode_recordings(args.write_video_pool)} lossless videos (one per clip)"


def settings_from(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig the flags give; an out-of-range value is an EvalError naming its flag."""
    try:
        return EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig) if f.name not in _NOT_FLAGS})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise EvalError(f"{_flag(str(err['loc'][0]))} {err['input']!r}: {err['msg']}") from None
