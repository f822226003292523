"""The selectors, run by the engine over a pool cut into parts: the hardness baseline, OptiDEL's
diverse hard selection and the whole-image baselines, on synthetic clustered embeddings (real
faiss k-means); and the round-robin and the embeddings' geometry they rest on."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from optidel.manifests import schema
from optidel.pipeline.config import SelectConfig
from optidel.pipeline.selection import embeddings, round_robin
from optidel.pipeline.selection.embeddings import diversity_stats
from optidel.pipeline.selection.selectors import register_selector
from selection_reference import Parts, over_parts

DROP_REASONS = {
    schema.DROP_BUDGET,
    schema.DROP_DUPLICATE,
    schema.DROP_QUOTA,
    schema.DROP_SOURCE_CAP,
    schema.DROP_OUTLIER,
}


def select(ids, sources, scores, emb, budget: int, config, method: str, seed: int, n_parts: int = 3) -> SimpleNamespace:
    """The selector `method` over the rows, cut into parts; its labels in the rows' order."""
    pool = {"id": ids, "source": sources}
    if scores is not None:
        pool.update(score=scores, embedding=emb)
    out, _ = over_parts(Parts(pool, n_parts, seed), n_parts, method, budget, config, seed)
    return SimpleNamespace(n_clusters=out.pop("k"), **out)


def clustered_pool(n_clusters=20, per_cluster=30, dim=16, per_source=2, hard_cluster=0, seed=0):
    """Unit embeddings around n_clusters random directions; the hard_cluster's patches score
    far above all others, so hardness alone would take them all."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    truth = np.repeat(np.arange(n_clusters), per_cluster)
    emb = centers[truth] + 0.15 * rng.normal(size=(len(truth), dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    scores = rng.uniform(0.0, 1.0, len(truth))
    scores[truth == hard_cluster] += 2.0
    n = len(truth)
    ids = np.array([f"patch-{i:05d}" for i in range(n)], dtype=object)
    # Sources stay within a true cluster, like the patches of one image.
    sources = np.array([f"src-{i // per_source:05d}" for i in range(n)], dtype=object)
    return ids, sources, scores.astype(np.float32), emb.astype(np.float32), truth


def check_reasons(sel):
    assert np.all(sel.reason[sel.selected] == "")
    dropped = sel.reason[~sel.selected]
    assert set(dropped.tolist()) <= DROP_REASONS, set(dropped.tolist())


def assert_water_filled(sel):
    """Picks spread evenly over the clusters: a cluster has fewer than the fullest one minus
    one only when it ran out of eligible rows."""
    picked = Counter(sel.cluster[sel.selected].tolist())
    unseen = np.isin(sel.reason, [schema.DROP_BUDGET, schema.DROP_QUOTA])
    eligible = Counter(sel.cluster[sel.selected | unseen].tolist())
    top = max(picked.values())
    for c, available in eligible.items():
        assert picked[c] >= min(available, top - 1), (c, picked, eligible)


def test_hard_is_top_k_by_score_under_the_source_cap():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=4, per_cluster=50, per_source=5)
    budget = 30
    config = SelectConfig(clusters=4, per_source_cap=2)
    sel = select(ids, sources, scores, emb, budget, config, "hard", 0)
    check_reasons(sel)
    assert sel.selected.sum() == budget
    assert max(Counter(sources[sel.selected]).values()) == 2
    floor = scores[sel.selected].min()
    harder_dropped = ~sel.selected & (scores > floor)
    assert harder_dropped.any()
    assert set(sel.reason[harder_dropped]) == {schema.DROP_SOURCE_CAP}
    at_cap = {s for s, c in Counter(sources[sel.selected]).items() if c == 2}
    assert all(s in at_cap for s in sources[harder_dropped])
    assert np.all(scores[sel.reason == schema.DROP_BUDGET] <= floor)

    # Without a binding cap it is exactly the top-k by score.
    config = SelectConfig(clusters=4, per_source_cap=10)
    loose = select(ids, sources, scores, emb, budget, config, "hard", 0)
    assert set(np.flatnonzero(loose.selected)) == set(np.argsort(-scores)[:budget])


def test_rank_is_hardness_order_with_ties_broken_by_id():
    ids = np.array(["c", "a", "d", "b"], dtype=object)
    scores = np.array([1.0, 2.0, 1.0, 1.0], dtype=np.float32)
    emb = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    sel = select(ids, ids, scores, emb, 1, SelectConfig(clusters=2), "hard", 0)
    assert sel.rank.tolist() == [2, 0, 3, 1]


def test_optidel_covers_the_clusters_hardness_alone_misses():
    ids, sources, scores, emb, truth = clustered_pool(per_cluster=50)
    budget = 40
    config = SelectConfig(clusters=20, trim_top_frac=0.0)
    optidel = select(ids, sources, scores, emb, budget, config, "optidel", 0)
    hard = select(ids, sources, scores, emb, budget, config, "hard", 0)
    for sel in (optidel, hard):
        check_reasons(sel)
        assert sel.selected.sum() == budget
    assert len(set(truth[optidel.selected])) >= 18  # >= 90% of the 20 true clusters
    assert len(set(truth[hard.selected])) <= 2
    d_opt = diversity_stats(optidel.cluster[optidel.selected], optidel.n_clusters)
    d_hard = diversity_stats(hard.cluster[hard.selected], hard.n_clusters)
    assert d_opt["coverage"] >= 0.9 > d_hard["coverage"]
    assert d_opt["entropy_nats"] > d_hard["entropy_nats"] + 1.0
    assert d_opt["entropy_nats"] <= d_opt["max_entropy_nats"] + 1e-9
    assert_water_filled(optidel)
    # Hard patches passed over because their cluster's share was full say so.
    assert (optidel.reason[truth == 0] == schema.DROP_QUOTA).sum() > 0
    # The diversity costs hardness, but OptiDEL still takes each cluster's hardest first.
    assert scores[optidel.selected].mean() < scores[hard.selected].mean()
    for c in set(optidel.cluster[optidel.selected].tolist()):
        members = (optidel.cluster == c) & (optidel.reason != schema.DROP_OUTLIER)
        assert optidel.selected[members][np.argmax(scores[members])]


def test_optidel_drops_near_duplicates():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=10, per_cluster=20, per_source=1)
    rng = np.random.default_rng(1)
    twin = emb + 0.01 * rng.normal(size=emb.shape).astype(np.float32)
    twin /= np.linalg.norm(twin, axis=1, keepdims=True)
    all_ids = np.concatenate([ids, [f"{p}-twin" for p in ids]])
    all_sources = np.concatenate([sources, [f"{s}-twin" for s in sources]])
    # A twin scores a little lower than its original, so the original is met first.
    all_scores = np.concatenate([scores, scores - 1e-3]).astype(np.float32)
    all_emb = np.concatenate([emb, twin])
    config = SelectConfig(clusters=10, near_duplicate_cosine=0.95, trim_top_frac=0.0)
    # A budget as large as the pool: every patch is looked at.
    sel = select(all_ids, all_sources, all_scores, all_emb, len(all_ids), config, "optidel", 0)
    check_reasons(sel)
    # The rule is per cluster: no two kept patches of one cluster are near-duplicates.
    chosen = all_emb[sel.selected]
    sims = chosen @ chosen.T
    np.fill_diagonal(sims, -1)
    same_cluster = sel.cluster[sel.selected][:, None] == sel.cluster[sel.selected][None, :]
    assert sims[same_cluster].max() <= 0.95
    n = len(ids)
    originals = np.flatnonzero(sel.selected[:n])
    assert len(originals) >= 0.9 * n
    assert not sel.selected[n:].any()
    assert set(sel.reason[n + originals]) == {schema.DROP_DUPLICATE}


def straddling_pool(dim=16, per_group=20, seed=0):
    """Two groups (k-means' two clusters) and three planted pairs: p/p' near-identical but on
    either side of the boundary between the groups, and q/q' near-identical inside group A.
    The pairs are the hardest rows, so each is proposed first in its cluster."""
    rng = np.random.default_rng(seed)
    a, b, u = np.eye(dim)[:3]
    noise = rng.normal(size=(2 * per_group, dim))
    noise[:, :3] = 0  # no noise along a, b, u: the boundary between the groups is exact
    groups = np.concatenate([np.tile(a, (per_group, 1)), np.tile(b, (per_group, 1))]) + 0.3 * noise
    mid = (a + b) / 2
    p = mid + 0.6 * u + 0.05 * (a - b)
    p_twin = mid + 0.6 * u - 0.05 * (a - b)
    q = groups[0] + 0.001 * rng.normal(size=dim)
    emb = np.vstack([groups, p, p_twin, q]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(emb)
    ids = np.array([f"patch-{i:05d}" for i in range(n)], dtype=object)
    sources = np.array([f"src-{i:05d}" for i in range(n)], dtype=object)
    scores = rng.uniform(0.0, 1.0, n).astype(np.float32)
    scores[[n - 3, n - 2, 0, n - 1]] = [10.0, 9.9, 5.0, 4.9]  # p, p', q (row 0), q'
    return ids, sources, scores, emb, (n - 3, n - 2), (0, n - 1)


def test_optidel_near_duplicates_are_judged_within_their_cluster():
    """The near-duplicate rule is per cluster: a planted pair across the boundary of two
    clusters is kept whole; a pair inside one cluster still loses its second member; and the
    outcome is the same for every input order."""
    ids, sources, scores, emb, (p, p_twin), (q, q_twin) = straddling_pool()
    config = SelectConfig(clusters=2, near_duplicate_cosine=0.95, trim_top_frac=0.0)
    args = dict(budget=len(ids), config=config, method="optidel", seed=0)
    sel = select(ids, sources, scores, emb, **args)
    check_reasons(sel)
    centred = emb - emb.astype(np.float64).mean(axis=0)
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    # The planted pairs are near-duplicates in the space the rule reads (centred unit rows).
    assert centred[p] @ centred[p_twin] > 0.95 and centred[q] @ centred[q_twin] > 0.95
    assert sel.cluster[p] != sel.cluster[p_twin] and sel.cluster[q] == sel.cluster[q_twin]
    assert sel.selected[p] and sel.selected[p_twin]
    assert sel.selected[q] and not sel.selected[q_twin]
    assert sel.reason[q_twin] == schema.DROP_DUPLICATE
    # No two kept rows of one cluster are near-duplicates; every dropped one has a kept one in
    # its own cluster that it is near.
    chosen = np.flatnonzero(sel.selected)
    for i in np.flatnonzero(sel.reason == schema.DROP_DUPLICATE):
        same = chosen[sel.cluster[chosen] == sel.cluster[i]]
        assert (centred[same] @ centred[i]).max() > 0.95
    for c in set(sel.cluster.tolist()):
        kept = centred[chosen[sel.cluster[chosen] == c]]
        sims = kept @ kept.T
        np.fill_diagonal(sims, -1)
        assert sims.max() <= 0.95 + 1e-6
    for perm_seed in (1, 2, 3):
        perm = np.random.default_rng(perm_seed).permutation(len(ids))
        shuffled = select(ids[perm], sources[perm], scores[perm], emb[perm], **args)
        for field in ("selected", "cluster", "rank", "reason"):
            assert np.array_equal(getattr(sel, field)[perm], getattr(shuffled, field)), field


def guards(emb: np.ndarray, threshold: float):
    """take_round_robin's guards over the unit rows `emb`, as a selection in memory makes them."""
    return lambda cluster, queue, capacity: round_robin.QueueGuard(queue, emb, capacity, threshold)


def test_round_robin_checks_each_proposal_against_its_own_cluster():
    """take_round_robin on given clusters. x (cluster 0) and its twin x' (cluster 1): both kept.
    y and its twin y' (both cluster 1): y' dropped. Checking against every kept patch, or
    against another cluster's, drops x' or keeps y'."""
    e = np.eye(4, dtype=np.float32)
    x, x_twin, y, y_twin, w = e[0], e[0] + 0.01 * e[1], e[2], e[2] + 0.01 * e[3], e[1]
    emb = np.stack([x, x_twin, y, y_twin, w]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cluster = np.array([0, 1, 1, 1, 0], dtype=np.int32)
    sources = np.array([f"s{i}" for i in range(5)], dtype=object)
    selected = np.zeros(5, dtype=bool)
    reason = np.full(5, schema.DROP_BUDGET, dtype=object)
    position = round_robin.take_round_robin(np.arange(5), cluster, sources, 10, 10, selected, reason, guards(emb, 0.95))
    assert selected.tolist() == [True, True, True, False, True]
    assert reason.tolist() == ["", "", "", schema.DROP_DUPLICATE, ""]
    assert position == {0: 2, 1: 3}


def test_round_robin_guards_grow_past_an_even_share():
    """One cluster keeps far more than budget / clusters patches: its guard grows, and every
    later proposal is still checked against all of its cluster's kept patches."""
    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(50, 64))
    emb = np.vstack([distinct, distinct[0] + 1e-3 * rng.normal(size=64), rng.normal(size=64)]).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    n = len(emb)
    cluster = np.array([0] * 51 + [1], dtype=np.int32)  # the late twin of row 0 is cluster 0's last
    sources = np.array([f"s{i}" for i in range(n)], dtype=object)
    selected = np.zeros(n, dtype=bool)
    reason = np.full(n, schema.DROP_BUDGET, dtype=object)
    round_robin.take_round_robin(np.arange(n), cluster, sources, n, 10, selected, reason, guards(emb, 0.95))
    assert selected[:50].all() and selected[51]
    assert reason[50] == schema.DROP_DUPLICATE


def test_optidel_respects_the_per_source_cap():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=5, per_cluster=40, per_source=8)
    config = SelectConfig(clusters=5, per_source_cap=3, trim_top_frac=0.0, near_duplicate_cosine=1.0)
    sel = select(ids, sources, scores, emb, 60, config, "optidel", 0)
    check_reasons(sel)
    counts = Counter(sources[sel.selected])
    assert max(counts.values()) == 3
    capped = sel.reason == schema.DROP_SOURCE_CAP
    assert capped.any()
    assert all(counts[s] == 3 for s in sources[capped])


def test_trim_drops_the_extreme_top_tail():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=5, per_cluster=40, per_source=1)
    config = SelectConfig(clusters=5, trim_top_frac=0.1, near_duplicate_cosine=1.0)
    sel = select(ids, sources, scores, emb, 30, config, "optidel", 0)
    check_reasons(sel)
    top = np.argsort(-scores)[:20]  # 10% of 200
    assert set(np.flatnonzero(sel.reason == schema.DROP_OUTLIER)) == set(top)
    assert not sel.selected[top].any()
    assert sel.selected.sum() == 30


@pytest.mark.parametrize("method", ["optidel", "hard"])
def test_patch_selection_is_deterministic_and_ignores_row_order(method):
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=8, per_cluster=25)
    config = SelectConfig(clusters=8)
    first = select(ids, sources, scores, emb, 40, config, method, 7)
    again = select(ids, sources, scores, emb, 40, config, method, 7)
    perm = np.random.default_rng(3).permutation(len(ids))
    shuffled = select(ids[perm], sources[perm], scores[perm], emb[perm], 40, config, method, 7)
    for field in ("selected", "cluster", "rank", "reason"):
        assert np.array_equal(getattr(first, field), getattr(again, field))
        assert np.array_equal(getattr(first, field)[perm], getattr(shuffled, field)), field


def test_shortfall_selects_every_eligible_patch():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=3, per_cluster=4, per_source=1)
    config = SelectConfig(clusters=50, trim_top_frac=0.0, near_duplicate_cosine=1.0)
    sel = select(ids, sources, scores, emb, 100, config, "optidel", 0)
    assert sel.selected.all()
    assert sel.n_clusters == len(ids)  # k shrinks to the number of candidates


def test_bad_input_is_named():
    ids, sources, scores, emb, _ = clustered_pool(n_clusters=2, per_cluster=5)
    with pytest.raises(ValueError, match="unknown selector 'greedy'; expected one of optidel, hard, random, dedup"):
        select(ids, sources, scores, emb, 4, SelectConfig(), "greedy", 0)
    bad = scores.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="patch-00003"):
        select(ids, sources, bad, emb, 4, SelectConfig(), "optidel", 0)


def test_traits_that_do_not_go_together_are_refused():
    with pytest.raises(ValueError, match="'optidel' is already registered"):
        register_selector("optidel", unit="patch", order="hardness")
    with pytest.raises(ValueError, match="quotas take turns over clusters"):
        register_selector("quotas-alone", unit="patch", order="hardness", quotas=True)
    with pytest.raises(ValueError, match="near-duplicate rule works within them"):
        register_selector("global-dedup", unit="image", order="draw", clusters=True, near_duplicates=True)
    with pytest.raises(ValueError, match="patches come from the scored pass"):
        register_selector("random-patches", unit="patch", order="draw")


def test_random_images_are_seeded_and_order_free():
    ids = np.array([f"{i:064x}" for i in range(200)], dtype=object)
    pick = {seed: select(ids, ids, None, None, 20, SelectConfig(), "random", seed) for seed in (0, 1)}
    for sel in pick.values():
        assert sel.selected.sum() == 20
        assert set(sel.reason[~sel.selected]) == {schema.DROP_BUDGET}
        assert sorted(sel.rank.tolist()) == list(range(200))
    assert set(ids[pick[0].selected]) != set(ids[pick[1].selected])
    perm = np.random.default_rng(0).permutation(200)
    shuffled = select(ids[perm], ids[perm], None, None, 20, SelectConfig(), "random", 0)
    assert set(ids[perm][shuffled.selected]) == set(ids[pick[0].selected])
    # A source's draw does not depend on the rest of the pool.
    half = select(ids[:100], ids[:100], None, None, 200, SelectConfig(), "random", 0)
    assert half.selected.all()


def test_dedup_images_drops_planted_near_duplicates():
    _, _, scores, emb, _ = clustered_pool(n_clusters=6, per_cluster=10, per_source=1)
    rng = np.random.default_rng(2)
    planted = rng.choice(len(emb), 15, replace=False)
    copies = emb[planted] + 0.005 * rng.normal(size=(15, emb.shape[1])).astype(np.float32)
    all_emb = np.concatenate([emb, copies])
    n = len(all_emb)
    ids = np.array([f"{i:064x}" for i in range(n)], dtype=object)
    all_scores = np.concatenate([scores, scores[planted]])
    config = SelectConfig(clusters=6, near_duplicate_cosine=0.95)

    generous = select(ids, ids, all_scores, all_emb, n, config, "dedup", 0)
    check_reasons(generous)
    for original, copy in zip(planted, range(len(emb), n)):
        assert generous.selected[original] != generous.selected[copy]
    assert (generous.reason == schema.DROP_DUPLICATE).sum() >= 15
    assert generous.selected.sum() == n - (generous.reason == schema.DROP_DUPLICATE).sum()

    tight = select(ids, ids, all_scores, all_emb, 12, config, "dedup", 0)
    assert tight.selected.sum() == 12
    # Never looked at, yet within the budget's reach of a plain draw: its cluster's turn had passed.
    assert set(tight.reason[~tight.selected]) == {schema.DROP_BUDGET, schema.DROP_DUPLICATE, schema.DROP_QUOTA}
    assert_water_filled(tight)

    perm = np.random.default_rng(5).permutation(n)
    shuffled = select(ids[perm], ids[perm], all_scores[perm], all_emb[perm], 12, config, "dedup", 0)
    assert np.array_equal(tight.selected[perm], shuffled.selected)
    assert np.array_equal(tight.reason[perm], shuffled.reason)


def test_diversity_stats():
    stats = diversity_stats([0, 0, 1, 1, -1], 4)
    assert stats["clusters_covered"] == 2
    assert stats["coverage"] == 0.5
    assert stats["entropy_nats"] == pytest.approx(np.log(2))
    assert stats["max_entropy_nats"] == pytest.approx(np.log(4))
    with pytest.raises(ValueError, match="out of range"):
        diversity_stats([5], 4)


def test_unit_rows_in_chunks_are_the_one_shot_formula(monkeypatch):
    """The selection centres and normalises embeddings in chunks (to hold one full-size copy, not
    five) on the pool's exact mean; any chunking gives the bits of the one-shot formula."""
    from fractions import Fraction

    from optidel.stages import exact_mean

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(50, 16)).astype(np.float32)
    emb[7] = emb.mean(axis=0)  # near the mean: a tiny row after centring
    mean = np.array([float(sum(Fraction(float(v)) for v in column) / 50) for column in emb.T])
    centred = (emb - mean).astype(np.float32)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    expected = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 0)
    for chunk in (1, 3, 7, 50, 1024):
        monkeypatch.setattr(embeddings, "CHUNK", chunk)
        got = embeddings.centred_unit_rows(embeddings.embedding_rows(emb, 50), exact_mean.mean_of_sums(exact_mean.column_sums(emb), 50))
        assert got.dtype == np.float32 and np.array_equal(got, expected), chunk


def test_a_rows_cluster_does_not_depend_on_its_batch(monkeypatch):
    """Rows halfway between two centroids (near-ties, which faiss's batched search flips with the
    batch size) get the same cluster alone, in small batches and in the whole pool: a selection
    over the pass-1 parts assigns part by part."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(32, 128)).astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    a = rng.integers(0, 32, 600)
    b = (a + rng.integers(1, 32, 600)) % 32
    x = (centroids[a] + centroids[b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    whole = embeddings.assign_clusters(x, centroids)
    assert np.all((whole == a) | (whole == b))
    alone = np.concatenate([embeddings.assign_clusters(x[i : i + 1], centroids) for i in range(len(x))])
    assert np.array_equal(alone, whole)
    monkeypatch.setattr(embeddings, "CHUNK", 7)
    assert np.array_equal(embeddings.assign_clusters(x, centroids), whole)
