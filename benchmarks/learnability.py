"""Learnability as the selection's ranking, measured on a dirty pool: a measurement device, not a
selector. It lets the composition bench (docs/dirty-pool.md) see what ranking by learnability
would select while the selection engine has no notion of it.

    python benchmarks/learnability.py reselect SCORED_OUT NEW_OUT [--rank learnability|combined] [KEY=VALUE...]
    optidel run INPUT... -o NEW_OUT [SCORED_OUT's settings] [KEY=VALUE as --set]
    optidel eval --composition --arm NAME=NEW_OUT ... --out RESULTS
    python benchmarks/learnability.py table --arm NAME=OUT:SCORED_OUT ... > RESULTS/learnability.md

A patch's learnability is score_early - score (stages/score.py): how much of its masked
reconstruction loss the self-trained proxy shed between its early and its final checkpoint, a
label-free analogue of RHO-LOSS (arXiv 2206.07137).

`reselect` seeds NEW_OUT with SCORED_OUT's scored pass 1 (benchmarks/reselect.py, KEY=VALUE
its selection settings), then overwrites the `score` column of the copied pass-1 parts with the
ranking value, so that the unchanged barrier ranks, trims and quota-fills by it:
- `learnability`: score_early - score;
- `combined`: the mean of the row's pool percentile ranks by score and by learnability, hard
  and learnable at once;
- `floor`: the score itself, except that rows below the pool's `--floor` quantile of
  learnability are moved below every other row: hardness ranks, and the least learnable rows
  (noise, bubbles, glare stay hard for the proxy) are taken last.
NEW_OUT's `score` columns (patches.parquet, samples' scores, run.json's entropy accounting) then
hold that value, not the proxy's entropy; `table` reads the true scores from SCORED_OUT.

`table`: per patch arm (OUT selected, SCORED_OUT its scored run), the mean proxy score and the
mean learnability of the selected patches beside the means over every candidate patch of
SCORED_OUT, then the candidates' median score, score_early and learnability by what the pool's
truth says they show (patch_kind: a box that misses a local artefact's mask is clean). Only this
report reads the truth; `reselect` never does.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from optidel.eval.composition import patch_kind, pool_truth
from optidel.manifests import layout, schema
from optidel.pipeline.partitions import PASS1_DIR, part_bytes

RANKS = ("learnability", "combined", "floor")


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank among `values`, 0 (lowest) to 1 (highest), equal values by position."""
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1)


def ranking_values(parts: list[pa.Table], rank: str, floor: float = 0.0) -> list[np.ndarray]:
    """Per part, the value its rows are to be ranked by. Patch rows and source rows (whole frames,
    which only whole-image selectors rank) are ranked each among their own kind, pool-wide."""
    score = [t.column("score").to_numpy(zero_copy_only=False).astype(np.float64) for t in parts]
    early = [t.column("score_early").to_numpy(zero_copy_only=False).astype(np.float64) for t in parts]
    learn = [e - s for e, s in zip(early, score)]
    if rank == "learnability":
        return learn
    is_patch = [t.column("patch_index").to_numpy() >= 0 for t in parts]
    out = [np.full(len(s), np.nan) for s in score]
    for patches in (True, False):
        where = [(p == patches) & np.isfinite(s) for p, s in zip(is_patch, score)]
        kind_score = np.concatenate([s[w] for s, w in zip(score, where)])
        kind_learn = np.concatenate([v[w] for v, w in zip(learn, where)])
        if rank == "floor":
            value = kind_score.copy()
            if len(value):  # below the floor: shifted under the lowest score of the kind
                below = percentile_ranks(kind_learn) < floor
                value[below] -= kind_score.max() - kind_score.min() + 1
        else:
            value = (percentile_ranks(kind_score) + percentile_ranks(kind_learn)) / 2
        start = 0
        for o, w in zip(out, where):
            o[w] = value[start : start + w.sum()]
            start += w.sum()
    return out


def reselect(args) -> int:
    names = sorted(p.name for p in Path(args.scored_out, PASS1_DIR).glob("part-*.parquet"))
    parts = [pq.read_table(Path(args.scored_out, PASS1_DIR, name)) for name in names]
    if not parts or "score_early" not in parts[0].column_names:
        sys.exit(f"learnability: {args.scored_out}'s pass 1 has no score_early: rerun it with this code")
    scored = [t.filter(pc.is_finite(t.column("score"))) for t in parts]
    if any(pc.any(pc.is_nan(t.column("score_early"))).as_py() for t in scored):
        sys.exit(f"learnability: {args.scored_out}'s proxy had no early checkpoint (score.mae.early_fraction null)")
    rewrite_scores(args.scored_out, args.new_out, args.settings, names, parts, ranking_values(parts, args.rank, args.floor))
    print(f"{args.new_out}: its pass-1 score is now {args.rank}; run optidel on it with the same settings")
    return 0


def rewrite_scores(scored_out: str, new_out: str, settings: list[str], names: list[str], parts: list[pa.Table],
                   values: list[np.ndarray]) -> None:
    """NEW_OUT seeded with SCORED_OUT's pass 1 (reselect.py, `settings` its selection's), each
    part's `score` column replaced by its `values`, in the bytes pass 1 writes."""
    reselect_py = Path(__file__).resolve().parent / "reselect.py"
    subprocess.run([sys.executable, str(reselect_py), scored_out, new_out, *settings], check=True)
    for name, part, value in zip(names, parts, values):
        column = pa.array(value.astype(np.float32))  # NaN stays NaN (not null), as pass 1 writes it
        part = part.set_column(part.schema.get_field_index("score"), "score", column)
        Path(new_out, PASS1_DIR, name).write_bytes(part_bytes(part))


def _candidates(out: str) -> list[dict]:
    """Every candidate patch of a scored run (the rows composition's pool_score averages), with
    its score and score_early, from its pass-1 parts: patches.parquet has no score_early."""
    columns = ["patch_index", "patch_id", "source_id", "x0", "y0", "x1", "y1", "score", "score_early"]
    parts = pq.ParquetDataset(str(Path(out, PASS1_DIR))).read(columns=columns).to_pylist()
    return [p for p in parts if p["patch_index"] >= 0]


def table(args) -> int:
    print("| arm | patches | score (pool) | learnability (pool) |")
    print("| --- | ---: | ---: | ---: |")
    pools = {}
    for spec in args.arm:
        name, _, rest = spec.partition("=")
        out, _, scored = rest.partition(":")
        pool = pools.setdefault(scored, _candidates(scored))
        by_id = {p["patch_id"]: p for p in pool}
        picked = layout.Output(out).read_manifest("patches", columns=["patch_id", "selected"]).to_pylist()
        chosen = [by_id[p["patch_id"]] for p in picked if p["selected"]]
        (score, learn), (pool_score, pool_learn) = _means(chosen), _means(pool)
        print(f"| {name} | {len(chosen)} | {score:.3f} ({pool_score:.3f}) | {learn:.3f} ({pool_learn:.3f}) |")
    for scored, pool in pools.items():
        print(f"\nCandidates of {scored} by what they show (medians; only this report reads the truth):\n")
        print("| kind | candidates | score | score_early | learnability |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for kind, rows in sorted(_by_kind(scored, pool).items(), key=lambda item: -len(item[1])):
            score, early = np.array([p["score"] for p in rows]), np.array([p["score_early"] for p in rows])
            print(f"| {kind} | {len(rows)} | {np.median(score):.3f} | {np.median(early):.3f} | "
                  f"{np.median(early - score):.3f} |")  # fmt: skip
    return 0


def _means(patches: list[dict]) -> tuple[float, float]:
    score = np.array([p["score"] for p in patches])
    return float(score.mean()), float(np.mean([p["score_early"] for p in patches]) - score.mean())


def _by_kind(out: str, pool: list[dict]) -> dict[str, list[dict]]:
    _, truth = pool_truth(out)
    sources = layout.Output(out).read_manifest("sources", columns=["source_id", "uri", "status", "width", "height"])
    ok = {s["source_id"]: s for s in sources.to_pylist() if s["status"] == schema.OK}
    found = defaultdict(list)
    for p in pool:
        found[patch_kind(p, ok[p["source_id"]], truth)].append(p)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("reselect", help="NEW_OUT: SCORED_OUT's pass 1, ranked by learnability")
    one.add_argument("scored_out")
    one.add_argument("new_out")
    one.add_argument("--rank", choices=RANKS, default="learnability")
    one.add_argument("--floor", type=float, default=0.25, help="floor: the learnability quantile taken last")
    one.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    report = commands.add_parser("table", help="true proxy scores and learnability of selections")
    report.add_argument("--arm", action="append", required=True, metavar="NAME=OUT:SCORED_OUT")
    args = parser.parse_args()
    return reselect(args) if args.command == "reselect" else table(args)


if __name__ == "__main__":
    sys.exit(main())
