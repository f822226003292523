"""One hop: a new selector or proposer is one registration, and `optidel run` then offers it in
--help, accepts it in the config, refuses what is not registered, and runs it end to end on real
Ray, real tars and real Parquet."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from optidel.manifests import decode_mask, schema
from optidel.manifests.verify import verify
from optidel.pipeline import cli
from optidel.pipeline import config as config_mod
from optidel.pipeline.selection import selectors
from optidel.stages import mae, propose, score


N_SOURCES = 12
KEEP = 0.25
SETS = ["select.clusters=4", "output.size=64", "output.format=png", "score.masks_per_patch=1"]
GRID = 3  # the toy proposer's cells per side
GRID_IOU = 0.5  # its predicted_iou, to recognise its patches in the manifest


def grid_masks(config, seed, device):
    """The toy proposer: a fixed GRID x GRID grid of rectangles on every image."""

    def generate(images):
        return [_grid_records(image.shape[:2]) for image in images]

    return generate


def _grid_records(shape) -> list[dict]:
    height, width = shape
    records = []
    for y0, y1 in _cells(height):
        for x0, x1 in _cells(width):
            mask = np.zeros((height, width), dtype=bool)
            mask[y0:y1, x0:x1] = True
            records.append(
                {
                    "segmentation": mask,
                    "bbox": [x0, y0, x1 - x0 - 1, y1 - y0 - 1],
                    "area": int(mask.sum()),
                    "predicted_iou": GRID_IOU,
                    "stability_score": 1.0,
                }
            )
    return records


def _cells(side: int) -> list[tuple[int, int]]:
    edges = [side * i // GRID for i in range(GRID + 1)]
    return list(zip(edges[:-1], edges[1:]))


@pytest.fixture()
def toy_selector():
    """A selector no built-in one is: each cluster's hardest patches in turn, with neither the
    near-duplicate rule nor a per-source cap."""
    selectors.register_selector("balanced", unit="patch", order="hardness", clusters=True, quotas=True)
    yield "balanced"
    del selectors.SELECTORS["balanced"]


@pytest.fixture()
def toy_proposer(ray_local):
    propose.register_proposer("grid", actor=False, needs_weights=False)(grid_masks)
    # Ray's workers cannot import a test module; a real plugin module would be installed there.
    ray_local.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield "grid"
    ray_local.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    del propose.PROPOSERS["grid"]


@pytest.fixture(scope="module")
def pool(kvasir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extension")
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))[:N_SOURCES]
    listing = tmp / "pool.txt"
    listing.write_text("".join(f"{kvasir / 'images' / n}\n" for n in names))
    # An untrained proxy is as deterministic as a trained one, and saves the training here.
    proxy = tmp / "proxy.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        mae.save_proxy(mae.MAE(score.proxy_spec(config_mod.load(sets=SETS).score)), str(proxy))
    return listing, proxy


def _run(pool, out, *flags) -> int:
    listing, proxy = pool
    args = ["--quiet", "run", str(listing), "-o", str(out), "--keep", str(KEEP), "--proxy", str(proxy), *flags]
    for item in SETS:
        args += ["--set", item]
    return cli.main(args)


def _help(capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_toy_selector_runs_end_to_end_over_several_parts(toy_selector, pool, tmp_path, ray_local, capsys):
    assert "{optidel,hard,random,dedup,balanced}" in _help(capsys)
    assert config_mod.load(overrides={"selector": "balanced"}).selector == "balanced"
    with pytest.raises(SystemExit):
        cli.main(["run", "x", "-o", str(tmp_path / "no"), "--selector", "hardest"])
    assert "invalid choice: 'hardest'" in capsys.readouterr().err

    assert _run(pool, tmp_path / "out", "--selector", "balanced", "--set", "ingest.partition_size=3") == 0
    assert len(list((tmp_path / "out" / "work" / "pass1").glob("*.parquet"))) == 4  # 12 sources, 4 parts
    patches = pq.read_table(tmp_path / "out" / "manifests" / "patches").to_pylist()
    chosen = [p for p in patches if p["selected"]]
    assert len(chosen) == 4 * math.ceil(KEEP * N_SOURCES)
    per_cluster = Counter(p["cluster"] for p in chosen)
    assert len(per_cluster) > 1 and max(per_cluster.values()) - min(per_cluster.values()) <= 1  # turns, not hardness
    for c, taken in per_cluster.items():  # each cluster's hardest
        scores = sorted((p["score"] for p in patches if p["cluster"] == c), reverse=True)
        assert sorted((p["score"] for p in chosen if p["cluster"] == c), reverse=True) == scores[:taken]
    assert schema.DROP_QUOTA in {p["reason"] for p in patches}  # hard rows whose cluster's turn had passed
    assert verify(str(tmp_path / "out")).ok


def test_unregistered_selector_is_refused_by_the_config():
    with pytest.raises(config_mod.ConfigError, match="config key selector must be one of optidel, .*not 'balanced'"):
        config_mod.load(overrides={"selector": "balanced"})


def test_toy_proposer_runs_end_to_end(toy_proposer, pool, tmp_path, ray_local, capsys):
    assert "{auto,sam,regions,grid}" in _help(capsys)
    assert config_mod.load(overrides={"propose.proposer": "grid"}).propose.proposer == "grid"
    assert cli.main(["run", "x", "-o", str(tmp_path / "no"), "--set", "propose.proposer=grids"]) == 2
    assert "--set propose.proposer must be one of auto, sam, regions, grid, not 'grids'" in capsys.readouterr().err

    out = tmp_path / "out"
    assert _run(pool, out, "--proposer", "grid", "--selector", "hard") == 0
    assert json.loads((out / "run.json").read_text())["models"]["proposer"]["name"] == "grid"
    sources = {s["source_id"]: s for s in pq.read_table(out / "manifests" / "sources").to_pylist()}
    patches = pq.read_table(out / "manifests" / "patches").to_pylist()
    assert patches and all(p["predicted_iou"] == GRID_IOU for p in patches)
    for p in patches:  # every mask is one of the grid's cells
        source = sources[p["source_id"]]
        mask = decode_mask(p)
        assert mask.shape == (source["height"], source["width"])
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        cell = ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1))
        assert cell[0] in _cells(source["height"]) and cell[1] in _cells(source["width"])
        assert mask.sum() == (cell[0][1] - cell[0][0]) * (cell[1][1] - cell[1][0])
    assert sum(p["selected"] for p in patches) == 4 * math.ceil(KEEP * N_SOURCES)
    assert verify(str(out)).ok
