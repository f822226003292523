"""The engine over the parts (pipeline/selection/engine.py) against the plain in-memory reference
(selection_reference.py): the same rows, clusters, ranks and reasons on random pools split
into parts, for every selector, with score ties, identical and near-identical embeddings,
crowded sources, and shortlists short enough to be fetched again. A k-means sample smaller than the pool still
gives a valid selection: with its own centroids, the in-memory one, while the driver receives
the sample's rows and shortlists cut at keys read off the sample (fetched again when cut too
soon), not the pool."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from optidel.manifests import schema
from optidel.pipeline.config import SelectConfig
from optidel import seeding
from optidel.pipeline.selection import embeddings, engine, ranks
from optidel.pipeline.selection.round_robin import QueueGuard, take_round_robin
from optidel.stages import exact_mean
from selection_reference import Parts, assert_same, over_parts, plain_ranks, ranks_here, reference, run_here


def random_pool(seed: int, n: int = 600, dim: int = 12, n_centres: int = 10):
    """Rows around a few directions, those of the first much harder (so hardness alone would
    crowd one cluster); scores from a short list of values (many ties); some embeddings copied
    exactly, some nudged (near-duplicates); sources of 1 to 6 rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, dim))
    centre = rng.integers(0, n_centres, n)
    emb = centres[centre] + 0.4 * rng.normal(size=(n, dim))
    copies = rng.choice(n, n // 10, replace=False)
    emb[copies] = emb[rng.choice(n, len(copies))]
    nudged = rng.choice(n, n // 10, replace=False)
    emb[nudged] = emb[rng.choice(n, len(nudged))] + 1e-3 * rng.normal(size=(len(nudged), dim))
    scores = (rng.choice(np.linspace(0.5, 1.5, 40), n) + (centre == 0)).astype(np.float32)
    sources = np.repeat([f"src-{i:04d}" for i in range(n)], rng.integers(1, 7, n))[:n].astype(object)
    ids = np.array([f"p-{i:05d}" for i in rng.permutation(n)], dtype=object)
    return {"id": ids, "source": sources, "score": scores, "embedding": emb.astype(np.float32)}


def assert_chosen(parts: Parts, n_parts: int, verdict, expected: dict):
    """The verdict's chosen rows, with their clusters and their ranks from the parts' ranks (as the
    plan takes them), are the reference's selected rows: all the plan needs of them."""
    ids = parts.columns["id"].astype(str)
    chosen = verdict.chosen.ids.astype(str).tolist()
    assert sorted(chosen) == sorted(ids[expected["selected"]].tolist())
    rows = {i: r for r, i in enumerate(ids.tolist())}
    at = np.array([rows[i] for i in chosen], dtype=np.int64)
    assert np.array_equal(verdict.chosen.columns["cluster"], expected["cluster"][at])
    part_ranks, _ = ranks_here(parts, list(range(n_parts)), [list(range(n_parts))], "hardness")
    rank_of = {i: r for p in range(n_parts) for i, r in zip(ids[parts.rows[p]].tolist(), part_ranks[p].tolist())}
    assert np.array_equal([rank_of[i] for i in chosen], expected["rank"][at])
    assert float(exact_mean.mean_of_sums([verdict.score_sum], verdict.n)[0]) == pytest.approx(parts.columns["score"].mean())


CONFIG = SelectConfig(clusters=8, near_duplicate_cosine=0.98, per_source_cap=2, trim_top_frac=0.05)


REASONS = {  # what each selector's rules say about rows, beyond "" and budget
    "optidel": {schema.DROP_SOURCE_CAP, schema.DROP_DUPLICATE, schema.DROP_QUOTA, schema.DROP_OUTLIER},
    "hard": {schema.DROP_SOURCE_CAP},
    "dedup": {schema.DROP_DUPLICATE, schema.DROP_QUOTA},
}


@pytest.mark.parametrize("method", ["optidel", "hard", "dedup"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_over_parts_is_the_reference(method, seed):
    pool = random_pool(seed)
    budget = 120
    expected = reference(pool, method, budget, CONFIG, seed)
    # The rules had work to do: every reason the selector gives occurs.
    assert set(expected["reason"].tolist()) == {"", schema.DROP_BUDGET} | REASONS[method]
    assert expected["selected"].sum() == budget
    for n_parts in (1, 7):
        parts = Parts(pool, n_parts, seed)
        out, verdict = over_parts(parts, n_parts, method, budget, CONFIG, seed, shortlist=3)
        assert_same(out, expected)
        assert_chosen(parts, n_parts, verdict, expected)
        assert verdict.fetches > 1  # 3 rows per group ran out: the rounds fetched again


def test_default_shortlists_need_no_second_fetch_on_an_even_pool():
    pool = random_pool(5)
    out, verdict = over_parts(Parts(pool, 4, 5), 4, "optidel", 60, CONFIG, 5)
    assert_same(out, reference(pool, "optidel", 60, CONFIG, 5))
    assert verdict.fetches == 1


def test_a_budget_beyond_the_pool_selects_every_eligible_row():
    pool = random_pool(6, n=80)
    config = SelectConfig(clusters=4, near_duplicate_cosine=1.0, per_source_cap=100, trim_top_frac=0.05)
    out, verdict = over_parts(Parts(pool, 3, 6), 3, "optidel", 500, config, 6, shortlist=2)
    assert_same(out, reference(pool, "optidel", 500, config, 6))
    assert out["selected"].sum() == 80 - int(0.05 * 80)


@pytest.mark.parametrize("seed", [0, 3])
def test_random_images_over_parts_are_the_reference_draw(seed):
    pool = random_pool(seed, n=300)
    columns = {"id": pool["id"], "source": pool["id"]}
    out, verdict = over_parts(Parts(columns, 5, seed), 5, "random", 40, CONFIG, seed)
    assert_same(out, reference(columns, "random", 40, CONFIG, seed))
    assert np.all(out["cluster"] == -1) and verdict.k == 0


@pytest.mark.parametrize("too_small", [False, True])
def test_random_parts_send_their_draws_only_up_to_a_cut(too_small, monkeypatch):
    """Given the pool's size, each part sends its draws only up to where about 1.5 x the budget
    of the pool's should end: the driver receives a few of the rows an uncut head sends (each
    part's first `budget`); a margin far too small is fetched again, further, until the merge
    is the uncut one."""
    if too_small:
        monkeypatch.setattr(engine, "CUT_MARGIN", 0.05)
        monkeypatch.setattr(engine, "CUT_SLACK", 0)
    pool = random_pool(2, n=3000)
    columns = {"id": pool["id"], "source": pool["id"]}
    parts = Parts(columns, 40, 2)
    out, verdict = over_parts(parts, 40, "random", 60, CONFIG, 2)
    assert_same(out, reference(columns, "random", 60, CONFIG, 2))
    uncut = sum(min(len(rows), 60) for rows in parts.rows)
    if too_small:
        assert verdict.head_fetches > 1
    else:
        assert verdict.head_fetches == 1 and verdict.rows_received["head"] < 0.15 * uncut, verdict.rows_received


def test_a_sample_smaller_than_the_pool_gives_a_valid_selection():
    """k-means on 100 of 600 rows: other centroids, so another selection, but the budget is met
    under every rule: no source above its cap, no two selected rows of one cluster
    near-duplicates, the noise tail trimmed, and the picks spread over the clusters."""
    pool = random_pool(7)
    config = SelectConfig(clusters=8, near_duplicate_cosine=0.9, per_source_cap=2, trim_top_frac=0.05, kmeans_sample=100)
    out, verdict = over_parts(Parts(pool, 6, 7), 6, "optidel", 120, config, 7, shortlist=4)
    selected = out["selected"]
    assert selected.sum() == 120 and verdict.k == 8
    assert max(Counter(pool["source"][selected].tolist()).values()) <= 2
    assert np.all(out["reason"][out["rank"] < int(0.05 * 600)] == schema.DROP_OUTLIER)
    unit = pool["embedding"] - pool["embedding"].astype(np.float64).mean(axis=0)
    unit = (unit / np.linalg.norm(unit, axis=1, keepdims=True))[selected]
    cosines = unit @ unit.T
    clusters = out["cluster"][selected]
    assert cosines[(clusters[:, None] == clusters[None, :]) & ~np.eye(len(unit), dtype=bool)].max() <= 0.9 + 1e-6
    assert len(set(out["cluster"][selected].tolist())) == 8
    assert sorted(np.unique(out["rank"])) == list(range(600))
    exact, _ = over_parts(Parts(pool, 6, 7), 6, "optidel", 120,
                           config.model_copy(update={"kmeans_sample": 600}), 7, shortlist=4)
    assert not np.array_equal(exact["cluster"], out["cluster"])  # the sample did change the centroids


def uneven_parts(columns: dict, sizes: list[int], seed: int) -> Parts:
    """A pool cut into parts of these sizes (zeros: empty parts), its rows shuffled."""
    parts = Parts(columns, 1, seed)
    order = np.random.default_rng(seed).permutation(sum(sizes))
    parts.rows = np.split(order, np.cumsum(sizes)[:-1])
    return parts


@pytest.mark.parametrize("by", ["hardness", ("draw", 4)])
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    "sizes,grouping,ranges,sample",
    [
        ([300], 1, 1, 4),  # one part: one range
        ([300], 1, 6, 24),  # one part, one map, many ranges
        ([40, 0, 75, 33, 0, 90, 12, 50], 3, None, None),  # empty parts; a range per group
        ([40, 0, 75, 33, 0, 90, 12, 50], 1, 7, 28),  # a map per part
        ([40, 0, 75, 33, 0, 90, 12, 50], 2, 9, 1),  # a one-key sample per map: uneven ranges
        ([5, 0, 7, 3], 1, 40, 160),  # more ranges than rows: most hold none
        ([0, 0, 0], 1, 3, 12),  # no rows at all
    ],
)
def test_ranks_by_ranges_are_the_pool_order(seed, by, sizes, grouping, ranges, sample):
    """The sort by ranges gives every row its place in the pool's order, whatever the parts,
    maps, ranges and sample: scores of 3 values (long runs of ties, broken by id, with bounds
    inside them), empty parts, ranges with no rows."""
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    columns = {"id": np.array([f"p-{i:05d}" for i in rng.permutation(n)], dtype=object),
               "score": rng.choice(np.float32([0.5, 0.75, 1.25]), n)}
    parts = uneven_parts(columns, sizes, seed)
    part_ids = list(range(len(sizes)))
    groups = [part_ids[i:i + grouping] for i in range(0, len(part_ids), grouping)]
    found, per_range = ranks_here(parts, part_ids, groups, by, ranges, sample)
    assert per_range.sum() == n and len(per_range) == (ranges or len(groups))
    out = np.full(n, -1, dtype=np.int32)
    for p, rank in enumerate(found):
        assert rank.dtype == np.int32 and len(rank) == sizes[p]
        out[parts.rows[p]] = rank
    assert np.array_equal(out, plain_ranks(columns, by))
    if ranges and ranges > n:
        assert (per_range == 0).sum() >= ranges - n  # ranges holding no rows


def test_range_bounds_fall_inside_runs_of_ties():
    """With few score values, bounds cut runs of equal scores: rows of one score in two ranges,
    told apart by id alone (the case a wrong tie-break gets wrong)."""
    rng = np.random.default_rng(0)
    columns = {"id": np.array([f"p-{i:05d}" for i in rng.permutation(200)], dtype=object),
               "score": rng.choice(np.float32([0.5, 1.5]), 200)}
    parts = uneven_parts(columns, [60, 80, 60], 0)
    samples = [ranks.key_sample(parts, [p], "hardness", 20) for p in range(3)]
    bounds = ranks.range_bounds(samples, 5)
    primary, ids = -columns["score"].astype(np.float64), columns["id"].astype(str)
    where = ranks.range_of(primary, ids, bounds)
    assert len(bounds[0]) == 4 and len(set(bounds[0].tolist())) < 4  # two bounds share a score
    assert all(len(np.unique(where[primary == value])) > 1 for value in np.unique(primary))
    assert np.all(np.bincount(where, minlength=5) > 0)
    # Ranges are consecutive in the pool's order.
    order = np.lexsort((ids, primary))
    assert np.all(np.diff(where[order]) >= 0)


def sampled_reference(pool: dict, budget: int, config, method: str, seed: int):
    """The reference with the clusters of a k-means trained as over the parts when the sample is
    smaller than the pool: on the first kmeans_sample rows by (hash of (seed, id), id), in id
    order, centred on the pool's exact mean. Returns it and those centroids."""
    ids = pool["id"].astype(str)
    draws = [seeding.derive(seed, "kmeans-sample", i) for i in ids.tolist()]
    sample = sorted(sorted(range(len(ids)), key=lambda row: (draws[row], ids[row]))[: config.kmeans_sample], key=ids.__getitem__)
    emb = pool["embedding"]
    mean = exact_mean.mean_of_sums(exact_mean.column_sums(emb), len(ids))
    centroids = embeddings.train_centroids(embeddings.centred_unit_rows(emb[sample], mean), min(config.clusters, len(sample)), seed)
    return reference(pool, method, budget, config, seed, centroids), centroids


SAMPLED = CONFIG.model_copy(update={"kmeans_sample": 1000})


@pytest.mark.parametrize("method", ["optidel", "hard", "dedup"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sample_smaller_than_the_pool_cuts_the_shortlists_and_keeps_the_selection(method, seed, monkeypatch):
    """k-means on 1000 of 4000 rows: the sample (hence the centroids) is the first 1000 by
    (hash, id) while the driver receives its rows with embeddings alone; the shortlists, cut at
    keys read off the sample, bring a small part of the pool; the selection is the in-memory one
    with those centroids."""
    pool = random_pool(seed, n=4000)
    budget = 40
    expected, centroids = sampled_reference(pool, budget, SAMPLED, method, seed)
    assert expected["selected"].sum() == budget
    for n_parts in (1, 9, 40):
        parts = Parts(pool, n_parts, seed)
        out, verdict = over_parts(parts, n_parts, method, budget, SAMPLED, seed)
        assert np.array_equal(verdict.centroids, centroids)
        assert_same(out, expected)
        assert_chosen(parts, n_parts, verdict, expected)
        received = verdict.rows_received
        assert received["sample"] == 1000  # round 1: a key and a cluster per sample row, no embedding
        assert received["draws"] == sum(min(len(rows), 1000) for rows in parts.rows)
        assert received["shortlists"] < 0.3 * 4000, received
        assert verdict.rows_to_groups < 0.3 * 4000
        if method != "hard":  # its head: the noise tail (optidel's 1%) and the budget, about
            assert received["head"] < 0.1 * 4000, received
        assert verdict.recut == 0  # the margin holds (a cut comes too soon about once in 1e3 clusters)
        assert verdict.head_fetches == (method != "hard")


@pytest.mark.parametrize("method", ["optidel", "hard"])
def test_without_cuts_the_parts_send_most_of_the_pool(method, monkeypatch):
    """What the cuts save, on the pool above in 40 parts: with none (as before them), the parts
    send most eligible rows; with them, the same
    selection from a few of those."""
    pool = random_pool(0, n=4000)
    parts = Parts(pool, 40, 0)
    out, verdict = over_parts(parts, 40, method, 40, SAMPLED, 0, maps=40)
    monkeypatch.setattr(engine, "CUT_SLACK", 10**9)  # every cut beyond the sample: none
    uncut, before = over_parts(parts, 40, method, 40, SAMPLED, 0, maps=40)
    for name in out:
        assert np.array_equal(out[name], uncut[name]), name
    assert before.rows_to_groups > 0.6 * 4000
    assert verdict.rows_to_groups < 0.3 * before.rows_to_groups
    if method == "optidel":
        assert verdict.rows_received["head"] < 0.3 * before.rows_received["head"]
    assert verdict.rows_received["sample"] == 1000 and before.rows_received["sample"] == 1000


@pytest.mark.parametrize("method", ["optidel", "hard"])
@pytest.mark.parametrize("seed", [0, 3])
def test_cuts_that_come_too_soon_are_fetched_again(method, seed, monkeypatch):
    """A margin far too small cuts every shortlist short: those clusters are fetched again,
    cut further each time, until the merged shortlists are the uncut ones."""
    monkeypatch.setattr(engine, "CUT_MARGIN", 0.05)
    monkeypatch.setattr(engine, "CUT_SLACK", 0)
    pool = random_pool(seed, n=3000)
    expected, _ = sampled_reference(pool, 60, SAMPLED, method, seed)
    for n_parts in (5, 30):
        parts = Parts(pool, n_parts, seed)
        out, verdict = over_parts(parts, n_parts, method, 60, SAMPLED, seed)
        assert_same(out, expected)
        assert_chosen(parts, n_parts, verdict, expected)
        assert verdict.recut > 1 and verdict.fetches > verdict.recut
        assert (verdict.head_fetches > 1) == (method == "optidel")  # its head too was cut too soon


@pytest.mark.parametrize("margin,slack", [(engine.CUT_MARGIN, engine.CUT_SLACK), (0.2, 1)])
def test_cut_keys_inside_runs_of_tied_scores(margin, slack, monkeypatch):
    """Scores of three values: every cut key falls inside a run of ties, where the rows at or
    before it are told from the others by id alone."""
    monkeypatch.setattr(engine, "CUT_MARGIN", margin)
    monkeypatch.setattr(engine, "CUT_SLACK", slack)
    cut = engine._cut
    cuts = []
    monkeypatch.setattr(engine, "_cut", lambda *args: cuts.append(cut(*args)) or cuts[-1])
    pool = random_pool(4, n=3000)
    pool["score"] = np.random.default_rng(4).choice(np.float32([0.5, 1.0, 1.5]), 3000)
    expected, _ = sampled_reference(pool, 50, SAMPLED, "optidel", 4)
    parts = Parts(pool, 20, 4)
    out, verdict = over_parts(parts, 20, "optidel", 50, SAMPLED, 4)
    assert_same(out, expected)
    assert_chosen(parts, 20, verdict, expected)
    primary, ids = -pool["score"].astype(np.float64), pool["id"].astype(str)
    inside = [(primary == p) & (ids > i) for p, i in filter(None, cuts)]
    assert inside and all(rows.any() for rows in inside)  # rows of the cut's score come after it
    assert (verdict.recut > 0) == (margin < 1)


@pytest.mark.parametrize("twin", [True, False])
def test_a_kept_row_the_cap_skips_is_worked_out_again_when_it_blocked_one(twin):
    """The group tasks work out each cluster's near-duplicate decisions as if every row not
    near a kept one were kept. Cluster 1's row a takes source s's one place; cluster 0's x, of
    source s, is then skipped by the cap. When x's twin follows it, the task had refused the
    twin as near x: only working cluster 0 out again, without x, keeps the twin, as in memory.
    When no row is near x, nothing is worked out again."""
    e = np.eye(4, dtype=np.float32)
    unit = np.stack([e[2], e[0], e[0] + 0.01 * e[1] if twin else e[1], e[3]])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    rows = {"id": np.array(["a", "x", "x2", "y"], dtype=object), "source": np.array(["s", "s", "t", "u"], dtype=object),
            "primary": np.array([-4.0, -3.0, -2.0, -1.0]), "cluster": np.array([1, 0, 0, 0], dtype=np.int32)}
    selected, reason = np.zeros(4, dtype=bool), np.full(4, schema.DROP_BUDGET, dtype=object)
    in_memory = lambda cluster, queue, capacity: QueueGuard(queue, unit, capacity, 0.95)  # noqa: E731
    take_round_robin(np.arange(4), rows["cluster"], rows["source"], 4, 1, selected, reason, in_memory)
    assert reason.tolist() == ["", schema.DROP_SOURCE_CAP, "", ""]
    pieces = [{**{name: values[rows["cluster"] == g] for name, values in rows.items()}, "group": rows["cluster"][rows["cluster"] == g],
               "unit": unit[rows["cluster"] == g]} for g in (0, 1)]
    shortlists = engine._Shortlists(run_here, 0.95, 2)
    shortlists.merge({0: 3, 1: 1}, [pieces], {})
    assert shortlists.queues[0]["near"].tolist() == [False, twin, False]  # the task's guess: x kept
    # What the driver holds of a shortlist is fixed-width, with no Python object per row.
    assert all(values.dtype.kind in "biuS" for name, values in shortlists.queues[0].items() if name != "first")
    merged = shortlists.laid_out()
    decided = np.full(4, schema.DROP_BUDGET, dtype=object)
    take_round_robin(np.arange(4), merged["group"], merged["source"], 4, 1, np.zeros(4, dtype=bool), decided, shortlists.guard)
    assert decided.tolist() == reason.tolist()
    assert shortlists.worked_again == int(twin)


def test_the_sample_comes_back_as_utf8_and_its_cuts_as_text():
    """The driver holds the k-means sample's ids through round 3: as UTF-8 bytes (a quarter of
    numpy's unicode for ASCII ids), in the order of their text; a cut read off it is the id's
    text, which the parts compare with their own ids."""
    rng = np.random.default_rng(0)
    ids = np.array([f"{i:04d}-é" for i in rng.permutation(300)])
    emb = rng.normal(size=(300, 8)).astype(np.float32)
    piece = (rng.integers(0, 2**63, 300).astype(np.uint64), ids, emb, -rng.random(300))
    keys, sample_ids, cluster, _ = engine._trained_sample(np.zeros(8), 4, 200, 0, piece)
    assert sample_ids.dtype.kind == "S" and len(sample_ids) == 200
    text = np.char.decode(sample_ids, "utf-8")
    assert np.array_equal(engine.key_order(keys, text), np.arange(200))  # in the order, as text
    cut = engine._cut((keys, sample_ids), 0.5, 100)
    assert cut == (keys[engine.CUT_SLACK + 75], text[engine.CUT_SLACK + 75]) and isinstance(cut[1], str)
