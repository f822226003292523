"""The README's "Reading the output" snippets, taken from the README itself, run on a small real
output (tests/output_fixtures.py: real kvasir-seg patches, real shards and manifests).

Each snippet runs in a fresh interpreter, as a user's script would, with only the setup
snippet's OUT pointed at the fixture; a probe appended by the test prints what the snippet
read, as JSON, and the test checks that against the manifests.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from optidel.manifests import layout
from output_fixtures import build_output

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(r"<!-- reader: (?P<name>[^>]+?) -->\n```python\n(?P<code>.*?)```", re.DOTALL)
DEMO_OUT = 'OUT = "/tmp/optidel-demo/distilled"'

# Per snippet, an expression over the names it defines, printed as JSON after it runs.
PROBES = {
    "webdataset": "[len(list(ds)), lineage['sample_key'], list(image.size)]",  # each iter() starts over
    "wids": "[len(ds), sample['__key__'], sample['.json']['patch_ids'], list(sample['.jpg'].size)]",
    "ray.data": "[ds.count(), sorted(ds.columns())]",
    "HF datasets": "[len(ds), ds[0]['__key__'], sorted(ds.column_names)]",
    "DuckDB": "per_source",
    "pandas": "[len(patches), row.patch_id, list(mask.shape), int(mask.sum())]",
}


def snippets() -> dict[str, str]:
    found = {m["name"]: m["code"] for m in SNIPPET.finditer(README.read_text())}
    assert set(found) == {"setup", *PROBES}, f"README reader snippets: {sorted(found)}"
    return found


@pytest.fixture(scope="module")
def fixture(tmp_path_factory, kvasir):
    # Two shards (3 + 2 samples): a snippet that assumes one shard, or a count, fails here; and
    # a duplicate source (same source_id on two sources rows), as the demo has, for the joins.
    return build_output(tmp_path_factory.mktemp("readers") / "out", kvasir, n_samples=5, max_count=3, duplicates=2)


def run_snippet(name: str, out: str, tmp_path: Path) -> object:
    code = snippets()
    setup = code["setup"]
    assert setup.count(DEMO_OUT) == 1, "the setup snippet names the demo's output"
    script = setup.replace(DEMO_OUT, f"OUT = {out!r}") + code[name] + f"\nimport json\nprint(json.dumps({PROBES[name]}))\n"
    env = {
        # Caches in the test's folder (not TMPDIR: Ray's socket paths must stay short); Hugging
        # Face never goes online.
        "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, f"README snippet {name!r} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_readme_has_every_reader():
    snippets()


@pytest.mark.parametrize("name", ["webdataset", "wids", pytest.param("ray.data", marks=pytest.mark.slow), "HF datasets"])
def test_shard_reader_snippet(name, fixture, tmp_path):
    keys = [row["sample_key"] for row in fixture.samples]  # in write order
    got = run_snippet(name, fixture.out, tmp_path)
    if name == "webdataset":
        assert got == [len(keys), keys[0], [fixture.samples[0]["width"], fixture.samples[0]["height"]]]
    elif name == "wids":
        first = fixture.samples[0]
        assert got == [len(keys), keys[0], first["patch_ids"], [first["width"], first["height"]]]
    elif name == "ray.data":
        assert got[0] == len(keys) and {"__key__", "jpg", "json"} <= set(got[1])
    else:
        assert got[0] == len(keys) and got[1] == keys[0] and {"__key__", "jpg", "json"} <= set(got[2])


def _manifest(out: str, name: str) -> list[dict]:
    return pq.read_table(Path(out) / layout.manifest_relpath(name)).to_pylist()


def test_duckdb_snippet(fixture, tmp_path):
    uri = {s["source_id"]: s["uri"] for s in _manifest(fixture.out, "sources") if s["status"] == "ok"}
    selected = [uri[p["source_id"]] for p in _manifest(fixture.out, "patches") if p["selected"]]
    expected = sorted(((u, selected.count(u)) for u in set(selected)), key=lambda r: (-r[1], r[0]))
    assert [tuple(r) for r in run_snippet("DuckDB", fixture.out, tmp_path)] == expected


def test_pandas_snippet_decodes_a_mask(fixture, tmp_path):
    patches = _manifest(fixture.out, "patches")
    sources = {s["source_id"]: s for s in _manifest(fixture.out, "sources")}
    first = next(p for p in patches if p["selected"])
    source = sources[first["source_id"]]
    # The fixture's mask is the polyp's: mask_area counts its pixels, independently of the RLE.
    expected = [len(patches), first["patch_id"], [source["height"], source["width"]], first["mask_area"]]
    assert run_snippet("pandas", fixture.out, tmp_path) == expected


def test_reading_all_manifests_as_one_table_fails(fixture):
    """What the README says: the manifests folder is not one table, and a read of it fails
    rather than union the four."""
    out = fixture.out
    with pytest.raises(Exception, match="README.md"):
        pd.read_parquet(f"{out}/manifests/")
    with pytest.raises(duckdb.Error, match="No files found"):
        duckdb.sql(f"SELECT count(*) FROM '{out}/manifests/*.parquet'").fetchall()
