"""`optidel verify`: re-read every shard and check it against the manifests, byte for byte.

Checks: every sample of samples.parquet is in its shard exactly once, at its index, with
exactly the listed members, adjacent and in order; the image member's size and sha256 and the
json member's sample_key/patch_ids match the manifest; each shard's sample count, size and
sha256 match shards.parquet; index.json agrees with shards.parquet; no shard is missing, and
no shard, sample, member or temporary file is there that the manifests do not list, nor any
file but shards in OUT/shards/.

Shards are streamed with tarfile (hashing the file on the way through); nothing is extracted
to disk. Every problem names the shard (and the member when there is one).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

from . import layout, schema

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class VerifyReport:
    ok: bool
    problems: list[str]
    summary: str


@dataclass
class _Member:
    name: str
    size: int
    sha256: str
    data: bytes | None  # kept for json members only


@dataclass
class _ScannedShard:
    samples: dict[str, list[_Member]] = field(default_factory=dict)  # key -> members, archive order
    order: list[str] = field(default_factory=list)  # keys in archive order
    bytes: int = 0
    sha256: str = ""


class _HashingReader:
    """A read-only file wrapper that hashes and counts every byte tarfile pulls through it."""

    def __init__(self, f):
        self._f = f
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def verify(out: str) -> VerifyReport:
    """Check OUT's shards against its manifests; see the module docstring for what is checked."""
    output = layout.Output(out)
    problems: list[str] = []
    samples = _read_rows(output, "samples", problems)
    shards = _read_rows(output, "shards", problems)
    if samples is None or shards is None:
        return _report(problems, 0, 0)

    shard_rows = _by_shard_name(shards, problems)
    expected = _expected_samples(samples, shard_rows, problems)
    listed_in_index = _check_index(output, shards, problems)
    on_disk = _list_shard_dir(output, problems)

    where_listed: dict[str, str] = {}  # sample_key -> shard in samples.parquet
    for shard, rows in expected.items():
        for row in rows:
            where_listed.setdefault(row["sample_key"], shard)
    seen_in: dict[str, str] = {}  # sample_key -> first shard it was found in
    listings = {"shards.parquet": shard_rows, "index.json": listed_in_index}
    for name in sorted(set(shard_rows) | listed_in_index | on_disk):
        where = f"{layout.SHARDS_DIR}/{name}"
        if name not in on_disk:
            lists = " and ".join(m for m, names in listings.items() if name in names)
            held = len(expected.get(name, []))
            problems.append(f"{where}: shard missing (listed in {lists}; {held} sample(s) in samples.parquet)")
            continue
        if name not in shard_rows:
            problems.append(f"{where}: extra shard, not listed in shards.parquet")
            continue
        scanned = _scan_shard(output, name, problems)
        if scanned is None:
            continue
        _compare_shard(where, scanned, shard_rows[name], expected.get(name, []), where_listed, problems)
        for key in scanned.order:
            if key in seen_in:
                problems.append(f"{where}: sample {key} also in shard {seen_in[key]}")
            else:
                seen_in[key] = name
    return _report(problems, len(samples), len(shards))


def _report(problems: list[str], nsamples: int, nshards: int) -> VerifyReport:
    if problems:
        return VerifyReport(False, problems, f"verify FAILED: {len(problems)} problem(s)")
    summary = f"verify OK: {nsamples} samples in {nshards} shard(s), manifests and shards agree"
    return VerifyReport(True, [], summary)


def _read_rows(output: layout.Output, name: str, problems: list[str]) -> list[dict] | None:
    where = layout.manifest_relpath(name)
    try:
        return output.read_manifest(name).to_pylist()
    except FileNotFoundError:
        problems.append(f"{where}: missing")
    except (OSError, ValueError, pa.ArrowException) as exc:
        problems.append(f"{where}: unreadable: {exc}")
    return None


def _by_shard_name(shards: list[dict], problems: list[str]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for row in shards:
        if row["shard"] in rows:
            problems.append(f"{layout.SHARDS_DIR}/{row['shard']}: listed twice in shards.parquet")
        rows.setdefault(row["shard"], row)
    return rows


def _expected_samples(samples: list[dict], shard_rows: dict[str, dict], problems: list[str]) -> dict[str, list[dict]]:
    """samples.parquet rows grouped by shard and sorted by index, after the table-only checks."""
    by_shard: dict[str, list[dict]] = defaultdict(list)
    keys_seen: set[str] = set()
    for row in samples:
        key = row["sample_key"]
        if key in keys_seen:
            problems.append(f"{layout.SHARDS_DIR}/{row['shard']}: sample {key} listed twice in samples.parquet")
            continue
        keys_seen.add(key)
        by_shard[row["shard"]].append(row)
    for shard, rows in by_shard.items():
        where = f"{layout.SHARDS_DIR}/{shard}"
        rows.sort(key=lambda r: r["index_in_shard"])
        if shard not in shard_rows:
            problems.append(f"{where}: holds {len(rows)} sample(s) in samples.parquet but is not in shards.parquet")
        elif shard_rows[shard]["nsamples"] != len(rows):
            said = shard_rows[shard]["nsamples"]
            problems.append(f"{where}: shards.parquet says {said} samples, samples.parquet lists {len(rows)}")
        if [r["index_in_shard"] for r in rows] != list(range(len(rows))):
            problems.append(f"{where}: index_in_shard in samples.parquet is not 0..{len(rows) - 1}")
    return by_shard


def _check_index(output: layout.Output, shards: list[dict], problems: list[str]) -> set[str]:
    """Compare index.json with shards.parquet; return the shard names the index lists."""
    where = layout.INDEX_JSON
    try:
        index = output.read_json(layout.INDEX_JSON)
    except FileNotFoundError:
        problems.append(f"{where}: missing")
        return set()
    except (OSError, ValueError) as exc:
        problems.append(f"{where}: unreadable: {exc}")
        return set()
    if not isinstance(index, dict) or index.get("__kind__") != layout.INDEX_KIND or index.get("wids_version") != 1:
        problems.append(f"{where}: not a {layout.INDEX_KIND} index with wids_version 1")
        return set()
    entries = index.get("shardlist")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "url" in e for e in entries):
        problems.append(f"{where}: shardlist is not a list of {{url, nsamples}} entries")
        return set()
    listed = [(str(e["url"]), e.get("nsamples"), e.get("filesize")) for e in entries]
    for url, _, _ in listed:
        if posixpath.dirname(url) != layout.SHARDS_DIR:
            problems.append(f"{where}: shard url {url} is not {layout.SHARDS_DIR}/NAME, relative to the index")
    # Compared by shard name from here: shards.parquet names a shard by its file name.
    listed = [(posixpath.basename(url), nsamples, filesize) for url, nsamples, filesize in listed]
    expected = [(r["shard"], r["nsamples"], r["bytes"]) for r in shards]
    by_url = {url: (nsamples, filesize) for url, nsamples, filesize in listed}
    for shard, nsamples, nbytes in expected:
        if shard not in by_url:
            problems.append(f"{where}: shard {shard} of shards.parquet not in the index")
            continue
        got_n, got_size = by_url[shard]
        if got_n != nsamples:
            problems.append(f"{where}: shard {shard} nsamples {got_n}, shards.parquet says {nsamples}")
        if got_size is not None and got_size != nbytes:
            problems.append(f"{where}: shard {shard} filesize {got_size}, shards.parquet says {nbytes}")
    for url, _, _ in listed:
        if url not in {s for s, _, _ in expected}:
            problems.append(f"{where}: shard {url} not in shards.parquet")
    if len(by_url) != len(listed):
        problems.append(f"{where}: shardlist names a shard twice")
    elif set(by_url) == {s for s, _, _ in expected} and [u for u, _, _ in listed] != [s for s, _, _ in expected]:
        # wids numbers samples across shards in index order, so the order is part of the contract.
        problems.append(f"{where}: shardlist order differs from shards.parquet")
    return set(by_url)


def _list_shard_dir(output: layout.Output, problems: list[str]) -> set[str]:
    """Shard files present, plus a problem per leftover temporary file anywhere in OUT and per
    other file among the shards (ray.data and HF datasets read that folder whole)."""
    tables = [posixpath.dirname(layout.manifest_relpath(name)) for name in schema.SCHEMAS]
    leftovers = [output.path(d, "*.tmp") for d in (layout.SHARDS_DIR, layout.MANIFESTS_DIR, *tables, "")]
    for tmp in sorted(p for pattern in leftovers for p in output.fs.glob(pattern)):
        problems.append(f"{posixpath.relpath(tmp, output.root)}: leftover temporary file (an interrupted write)")
    names = {posixpath.basename(p) for p in output.fs.glob(output.path(layout.SHARDS_DIR, "*"))}
    for name in sorted(n for n in names if not n.endswith((".tar", ".tmp"))):
        problems.append(f"{layout.SHARDS_DIR}/{name}: not a shard; readers of the whole folder would read it as one")
    return {n for n in names if n.endswith(".tar")}


def _scan_shard(output: layout.Output, name: str, problems: list[str]) -> _ScannedShard | None:
    """Stream one tar: group members by key, hash each member and the whole file."""
    where = f"{layout.SHARDS_DIR}/{name}"
    scanned = _ScannedShard()
    try:
        with output.fs.open(output.path(layout.SHARDS_DIR, name), "rb") as f:
            reader = _HashingReader(f)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    _add_member(where, scanned, tar, info, problems)
            reader.drain()
    except (OSError, tarfile.TarError) as exc:
        problems.append(f"{where}: unreadable tar: {exc}")
        return None
    scanned.bytes = reader.count
    scanned.sha256 = reader.hash.hexdigest()
    return scanned


def _add_member(
    where: str, scanned: _ScannedShard, tar: tarfile.TarFile, info: tarfile.TarInfo, problems: list[str]
) -> None:
    if not info.isreg():
        problems.append(f"{where}: member {info.name} is not a regular file")
        return
    key, dot, _ = info.name.partition(".")
    if not dot or not key or "/" in key:
        problems.append(f"{where}: member {info.name} is not named <key>.<extension>")
        return
    data = tar.extractfile(info).read()
    kept = data if info.name.endswith(".json") else None
    member = _Member(info.name, len(data), hashlib.sha256(data).hexdigest(), kept)
    if key in scanned.samples:
        if scanned.order[-1] != key:
            problems.append(f"{where}: member {info.name} not adjacent to the other members of sample {key}")
        scanned.samples[key].append(member)
    else:
        scanned.samples[key] = [member]
        scanned.order.append(key)


def _compare_shard(
    where: str,
    scanned: _ScannedShard,
    shard_row: dict,
    rows: list[dict],
    where_listed: dict[str, str],
    problems: list[str],
) -> None:
    if len(scanned.order) != shard_row["nsamples"]:
        said = shard_row["nsamples"]
        problems.append(f"{where}: {len(scanned.order)} samples in the tar, shards.parquet says {said}")
    if scanned.bytes != shard_row["bytes"]:
        problems.append(f"{where}: {scanned.bytes} bytes, shards.parquet says {shard_row['bytes']}")
    if scanned.sha256 != shard_row["sha256"]:
        problems.append(f"{where}: sha256 {scanned.sha256}, shards.parquet says {shard_row['sha256']}")

    position = {key: i for i, key in enumerate(scanned.order)}
    listed_here = set()
    for row in rows:
        key = row["sample_key"]
        listed_here.add(key)
        if key not in position:
            problems.append(f"{where}: sample {key} (index {row['index_in_shard']}) missing from the shard")
            continue
        if position[key] != row["index_in_shard"]:
            problems.append(
                f"{where}: sample {key} at index {position[key]}, samples.parquet says {row['index_in_shard']}"
            )
        _compare_sample(where, row, scanned.samples[key], problems)
    for key in scanned.order:
        if key not in listed_here:
            names = ", ".join(m.name for m in scanned.samples[key])
            elsewhere = f" (samples.parquet puts it in {where_listed[key]})" if key in where_listed else ""
            problems.append(f"{where}: sample {key} (members {names}) not in samples.parquet here" + elsewhere)


def _compare_sample(where: str, row: dict, members: list[_Member], problems: list[str]) -> None:
    key = row["sample_key"]
    listed = list(row["members"])
    found = {m.name: m for m in members}
    for name in listed:
        if name not in found:
            problems.append(f"{where}: member {name} missing")
    for m in members:
        if m.name not in listed:
            problems.append(f"{where}: member {m.name} not listed in samples.parquet")
    if set(listed) == set(found) and listed != [m.name for m in members]:
        order = [m.name for m in members]
        problems.append(f"{where}: sample {key} members in order {order}, samples.parquet lists {listed}")

    images = [n for n in listed if n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
    if len(images) != 1:
        problems.append(f"{where}: sample {key} lists {len(images)} image members, expected 1")
    for name in images:
        if name not in found:
            continue
        m = found[name]
        if m.size != row["image_bytes"]:
            problems.append(f"{where}: member {name}: {m.size} bytes, samples.parquet says {row['image_bytes']}")
        if m.sha256 != row["image_sha256"]:
            problems.append(f"{where}: member {name}: sha256 {m.sha256}, samples.parquet says {row['image_sha256']}")

    json_name = f"{key}.json"
    if json_name not in listed:
        problems.append(f"{where}: sample {key} lists no json member")
    elif json_name in found:
        _compare_json(where, json_name, row, found[json_name].data, problems)


def _compare_json(where: str, name: str, row: dict, data: bytes, problems: list[str]) -> None:
    try:
        meta = json.loads(data)
    except ValueError as exc:
        problems.append(f"{where}: member {name}: not valid JSON ({exc})")
        return
    if not isinstance(meta, dict):
        problems.append(f"{where}: member {name}: not a JSON object")
        return
    for field_name in ("sample_key", "patch_ids"):
        got, want = meta.get(field_name), row[field_name]
        if got != want:
            problems.append(f"{where}: member {name}: {field_name} {got!r}, samples.parquet says {want!r}")
