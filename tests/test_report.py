"""`optidel report`: the HTML audit report built from real runs (random and optidel selectors on
real Ray), its contents checked against the manifests, and the page opened in headless Chromium."""

from __future__ import annotations

import html
import io
import json
import math
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from optidel.manifests import lineage, report, report_charts, report_data, report_html
from optidel.pipeline import cli
from optidel.pipeline import config as config_mod
from optidel.pipeline.runner import run

from output_fixtures import build_output
from test_run_optidel import FAST

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The proxy's quality does not matter to the report: a few steps give real scores and clusters.
QUICK_PROXY = ["score.mae.train_steps=5", "score.mae.train_patches=64"]


def _kvasir_list(kvasir: Path, path: Path, n: int, extra: list[str] = ()) -> Path:
    names = sorted(p.name for p in (kvasir / "images").glob("*.jpg"))
    pick = sorted(np.random.default_rng(11).choice(len(names), n, replace=False))
    path.write_text("".join(f"{kvasir / 'images' / names[i]}\n" for i in pick) + "".join(f"{e}\n" for e in extra))
    return path


@pytest.fixture(scope="module")
def random_run(kvasir, tmp_path_factory, ray_local):
    """Random selector on 15 kvasir images, a copy of one more, and bad sources of every kind a
    list file can give: 16 ok sources, so keep 0.25 gives 4 samples."""
    tmp = tmp_path_factory.mktemp("report-random")
    photo = io.BytesIO()  # re-encoded, so no kvasir file in the pool has the same bytes
    Image.open(sorted((kvasir / "images").glob("*.jpg"))[0]).save(photo, format="PNG")
    files = {
        "original.png": photo.getvalue(),
        "same_bytes.png": photo.getvalue(),  # listed after original.png: the duplicate
        "empty.jpg": b"",
        "text.jpg": b"not a picture\n" * 10,
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    expected_bad = {str(tmp / "same_bytes.png"): "duplicate", str(tmp / "empty.jpg"): "corrupt",
                    str(tmp / "text.jpg"): "corrupt", str(tmp / "gone.jpg"): "missing"}
    pool = _kvasir_list(kvasir, tmp / "pool.txt", 15, [str(tmp / n) for n in (*files, "gone.jpg")])
    out = tmp / "out"
    info = run([str(pool)], str(out), config_mod.load(overrides={"selector": "random", "keep": 0.25}))
    return out, info, expected_bad


@pytest.fixture(scope="module")
def optidel_run(kvasir, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("report-optidel")
    pool = _kvasir_list(kvasir, tmp / "pool.txt", 16)
    out = tmp / "out"
    info = run([str(pool)], str(out), config_mod.load(overrides={"keep": 0.25}, sets=FAST + QUICK_PROXY))
    index = Path(report.build_report(str(out)))
    return out, info, index


def _page_data(index: Path) -> dict:
    match = re.search(r'<script type="application/json" id="lineage-data">(.*?)</script>', index.read_text(), re.S)
    return json.loads(match.group(1))


def _section(index: Path, name: str) -> str:
    return re.search(rf'<section id="{name}">(.*?)</section>', index.read_text(), re.S).group(1)


def _samples(out: Path) -> list[dict]:
    rows = pq.read_table(out / "manifests" / "samples").to_pylist()
    return sorted(rows, key=lambda s: (s["shard"], s["index_in_shard"]))


def _mosaic(out: Path, sample: dict) -> Image.Image:
    with tarfile.open(out / "shards" / sample["shard"]) as tar:
        return Image.open(io.BytesIO(tar.extractfile(sample["members"][0]).read())).convert("RGB")


def _not_blank(image: Image.Image) -> bool:
    pixels = np.asarray(image.convert("RGB"))
    return pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500


def test_lineage_views_match_the_manifests(optidel_run):
    out, info, index = optidel_run
    samples = _samples(out)
    patches = {p["patch_id"]: p for p in pq.read_table(out / "manifests" / "patches").to_pylist()}
    views = _page_data(index)
    assert list(views) == [s["sample_key"] for s in samples] and len(samples) == info["counts"]["samples"] == 4
    for sample in samples:
        view = views[sample["sample_key"]]
        assert [v["patch_id"] for v in view["slots"]] == sample["patch_ids"]
        assert [v["source_id"] for v in view["slots"]] == sample["source_ids"]
        assert [v["box"] for v in view["slots"]] == [list(b) for b in sample["boxes"]]
        for v in view["slots"]:
            p = patches[v["patch_id"]]
            assert p["selected"] and p["sample_key"] == sample["sample_key"] and p["slot"] == v["slot"]
            assert math.isclose(v["score"], p["score"], rel_tol=1e-6)
            assert (v["cluster"], v["rank"]) == (p["cluster"], p["rank"]) and v["cluster"] is not None
        assert [s["source_id"] for s in view["sources"]] == list(dict.fromkeys(sample["source_ids"]))
        # The lineage drawing is draw_lineage's canvas, kept at full size; the thumbnail is the mosaic.
        drawn = Image.open(index.parent / view["image"])
        assert drawn.height == lineage.PANEL_HEIGHT + lineage.CAPTION + 2 * lineage.GAP and _not_blank(drawn)
        thumb = Image.open(index.parent / "thumbs" / f"{sample['sample_key']}.jpg").convert("RGB")
        mosaic = _mosaic(out, sample).resize(thumb.size, Image.Resampling.BILINEAR)
        assert np.corrcoef(np.asarray(thumb, float).ravel(), np.asarray(mosaic, float).ravel())[0, 1] > 0.9


def test_glance_charts_and_reasons_follow_run_json_and_manifests(optidel_run):
    out, info, index = optidel_run
    glance = _section(index, "glance")
    assert info["models"]["proxy"]["sha256"] in glance
    assert info["models"]["proposer"]["name"] in glance
    for stage in info["timings_s"]:
        assert f"<td>{stage}</td>" in glance
    assert f"<td>ok</td><td>{info['counts']['by_status']['ok']}</td>" in glance

    # Every chart draws both series: the pool's grey and the selection's blue.
    pool_grey = np.array([int(report_charts.POOL[i : i + 2], 16) for i in (1, 3, 5)])
    for name in ("scores", "clusters", "per_source", "v_information"):
        pixels = np.asarray(Image.open(index.parent / "charts" / f"{name}.png").convert("RGB")).astype(int)
        grey = (np.abs(pixels - pool_grey).sum(axis=-1) < 12).sum()
        blue = (pixels[..., 2] > pixels[..., 0] + 60).sum()
        assert grey > 500 and blue > 500, name

    patches = pq.read_table(out / "manifests" / "patches").to_pylist()
    reasons = _section(index, "reasons")
    expected = {"selected": sum(p["selected"] for p in patches)}
    for p in patches:
        if not p["selected"]:
            expected[p["reason"]] = expected.get(p["reason"], 0) + 1
    assert len(expected) > 1
    for reason, n in expected.items():
        assert f"<td>{reason}</td><td>{n:,}</td>" in reasons
    assert reasons.count("<tr>") == len(expected) + 1  # + header row
    legend = html.escape(report_html.LEGEND)  # what rank, quota and a negative score mean
    assert legend in reasons and legend in index.read_text().split('id="lineage"')[1]


def test_random_selector_report_has_no_scores_and_lists_bad_sources(random_run):
    out, info, expected_bad = random_run
    index = Path(report.build_report(str(out)))
    views = _page_data(index)
    assert len(views) == info["counts"]["samples"] == 4
    assert all(v["score"] is None and v["cluster"] is None for view in views.values() for v in view["slots"])
    charts = index.parent / "charts"
    assert sorted(p.name for p in charts.iterdir()) == ["per_source.png"]
    assert "no scores" in _section(index, "charts") and "no clusters" in _section(index, "charts")

    bad = _section(index, "bad")
    rows = re.findall(r"<tr><td>(\w+)</td><td><code>(.*?)</code></td><td>(.*?)</td></tr>", bad)
    assert {uri: status for status, uri, _ in rows} == expected_bad
    table = pq.read_table(out / "manifests" / "sources")
    sources = table.to_pylist()
    for status, uri, why in rows:
        src = next(s for s in sources if s["uri"] == uri)
        if status == "duplicate":  # names the file it repeats, not that file's id
            assert why == f"same bytes as {out.parent / 'original.png'}"
        else:
            assert why == src["error"] and why
    assert f"{len(expected_bad)} sources were left out of the pool" in bad
    one_missing = table.filter(pc.equal(table["status"], "missing"))
    assert "1 source was left out of the pool" in report_html._bad_sources(report_data.bad_sources(one_missing))


def test_charts_describe_one_pool_without_duplicate_source_patches():
    # Patches of a byte-duplicate source are scored but never clustered nor eligible: they are
    # in neither chart's pool, so the score and cluster charts count the same candidates.
    patches = pa.table({
        "score": [0.5, -0.2, 0.9, 0.1],
        "cluster": pa.array([0, 1, None, 1], pa.int32()),
        "selected": [True, False, False, False],
        "reason": ["", "budget", "duplicate_source", "cluster_quota"],
    })
    pool_scores, chosen_scores = report_data.scores(patches)
    pool_clusters, chosen_clusters = report_data.clusters(patches)
    assert sorted(pool_scores) == [-0.2, 0.1, 0.5] and list(chosen_scores) == [0.5]
    assert sorted(pool_clusters) == [0, 1, 1] and list(chosen_clusters) == [0]


def test_large_output_shows_first_and_seeded_random_samples(random_run, capsys):
    out, _, _ = random_run
    keys = [s["sample_key"] for s in _samples(out)]
    assert cli.main(["report", str(out)]) == 0
    assert cli.main(["report", str(out), "--max-samples", "3"]) == 0
    index = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("report: "))
    assert index == out / "report" / "index.html"

    shown = list(_page_data(index))
    assert shown[:2] == keys[:2] and shown[2] in keys[2:] and len(shown) == 3
    # The earlier full report's files are gone: only the shown samples have images.
    assert sorted(p.stem for p in (index.parent / "thumbs").iterdir()) == sorted(shown)
    assert sorted(p.stem for p in (index.parent / "lineage").iterdir()) == sorted(shown)
    assert "3 of 4 samples: the first 2 in output order and a seeded random 1" in _section(index, "sheet")
    report.build_report(str(out), max_samples=3)
    assert list(_page_data(index)) == shown


def test_choose_samples_is_seeded_by_key():
    keys = [f"key{i:04d}" for i in range(1000)]
    shown = report_data.choose_samples(keys, 10, seed=3)
    assert shown.indices[:5] == [0, 1, 2, 3, 4] and (shown.first, shown.random, shown.total) == (5, 5, 1000)
    assert shown.indices == sorted(set(shown.indices)) and min(shown.indices[5:]) >= 5
    assert report_data.choose_samples(keys, 10, seed=3).indices == shown.indices
    assert report_data.choose_samples(keys, 10, seed=4).indices != shown.indices
    # A key's draw does not depend on where it sits: reversing the tail keeps the same keys.
    tail_reversed = keys[:5] + keys[5:][::-1]
    again = report_data.choose_samples(tail_reversed, 10, seed=3)
    assert {tail_reversed[i] for i in again.indices} == {keys[i] for i in shown.indices}
    assert report_data.choose_samples(keys[:7], 10, seed=3).indices == list(range(7))
    with pytest.raises(report_data.ReportError, match="max_samples"):
        report_data.choose_samples(keys, 0, seed=3)


def test_not_an_output_directory_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an optidel output (no manifests/samples/samples.parquet)" in err and str(tmp_path) in err


def test_moved_source_fails_only_its_own_lineage_view(kvasir, tmp_path):
    # A private copy of 8 kvasir images (and masks) that the test may break.
    copy = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (copy / sub).mkdir(parents=True)
        for path in sorted((kvasir / sub).glob("*.jpg"))[:8]:
            shutil.copy(path, copy / sub / path.name)
    fixture = build_output(tmp_path / "out", copy, n_samples=2)
    moved = fixture.source_files[fixture.samples[1]["source_ids"][2]]
    moved.unlink()

    index = Path(report.build_report(fixture.out))
    views = _page_data(index)
    ok, broken = views[fixture.samples[0]["sample_key"]], views[fixture.samples[1]["sample_key"]]
    assert ok["image"] and ok["error"] is None
    assert broken["image"] is None and str(moved) in broken["error"]
    notes = index.read_text()
    assert "1 of 2 lineage drawings failed" in notes and "run.json is missing" in notes


@pytest.fixture
def chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium and chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1000"):
        options.add_argument(flag)
    # An explicit driver path: Selenium then looks nothing up online.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def test_click_a_mosaic_in_headless_chromium_shows_its_lineage(optidel_run, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out, _, index = optidel_run
    sample = _samples(out)[2]
    key = sample["sample_key"]
    chromium.get(index.as_uri())
    overlay = chromium.find_element(By.ID, "overlay")
    assert not overlay.is_displayed()
    # Every chart and thumbnail loads from beside the page: the report is self-contained.
    loaded = "return Array.from(document.querySelectorAll('#charts img, .sheet img')).map(i => i.complete && i.naturalWidth)"
    WebDriverWait(chromium, 10).until(lambda d: all(d.execute_script(loaded)))
    assert len(chromium.execute_script(loaded)) == 4 + 4

    chromium.find_element(By.CSS_SELECTOR, f'a.thumb[data-key="{key}"]').click()
    WebDriverWait(chromium, 10).until(lambda d: overlay.is_displayed())
    view = chromium.find_element(By.ID, "lineage")
    assert key in chromium.find_element(By.ID, "lineage-title").text
    for source_id in sample["source_ids"]:
        assert source_id in view.text
    for patch_id in sample["patch_ids"]:
        assert patch_id in view.text
    image = chromium.find_element(By.ID, "lineage-img")
    WebDriverWait(chromium, 10).until(lambda d: image.get_property("complete"))
    drawn = Image.open(index.parent / "lineage" / f"{key}.jpg")
    assert image.get_property("naturalWidth") == drawn.width
    shot = Image.open(io.BytesIO(chromium.get_screenshot_as_png()))
    assert _not_blank(shot)

    chromium.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    WebDriverWait(chromium, 10).until(lambda d: not overlay.is_displayed())
    # A link to index.html#KEY opens that sample's lineage directly.
    other = _samples(out)[0]
    chromium.get(f"{index.as_uri()}#{other['sample_key']}")
    WebDriverWait(chromium, 10).until(lambda d: d.find_element(By.ID, "overlay").is_displayed())
    assert other["source_ids"][0] in chromium.find_element(By.ID, "lineage").text
