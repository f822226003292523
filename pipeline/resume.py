"""Which job an output directory holds, and whether a run may resume it.

At its start a run records its job in OUT/work/job.json: the resolved config without the keys
that cannot change a byte of the output (VOLATILE_KEYS: --overwrite, and where and on how many
workers Ray runs), the listing (count and sha256 of every source's location) and the models'
checkpoints. Rerunning on the same OUT:

- OUT missing, empty, or holding only temporary files: a fresh run.
- OUT holding the same job, unfinished: resume. Pass-1 partitions already persisted and the
  self-trained proxy are reused; pass 2 and the manifests are cheap, so their leftovers (and
  every *.tmp) are removed and they are redone from the persisted candidates.
- OUT holding the same job, complete (run.json status complete): nothing to do; the run
  returns the recorded run.json.
- OUT holding a different job, or anything else: refused, naming the difference, unless
  --overwrite (which empties OUT first). A config key added to optidel since OUT was written
  counts at the value that does what optidel did before it (BEFORE_ADDED).

Sources are identified by location (uri, tar member, offset, length), not content: an image
rewritten in place between two attempts is not detected.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Sequence

from ..manifests.layout import INDEX_JSON, MANIFESTS_DIR, RUN_JSON, SHARDS_DIR, WORK_DIR, Output
from .config import Config
from .listing import Listing

JOB_JSON = f"{WORK_DIR}/job.json"
# 2: the output layout of issue 15 (manifests one folder per table, index.json above the shards),
# so that an OUT of the older layout is not taken for a finished run of this one.
JOB_FORMAT = 2
TMP_SUFFIX = ".tmp"
# Config keys that do not change the output: where Ray runs, how many workers, how often a
# failed one is retried, and whether OUT may be replaced.
VOLATILE_KEYS = frozenset(
    {
        "overwrite",
        "ray.address",
        "ray.cpus_per_task",
        "ray.cpus_per_actor",
        "ray.actors",
        "ray.model_batch_size",
        "ray.max_retries",
    }
)
# Config keys added to optidel since 2026-12-07, each with the value that does what optidel did
# before it: an OUT whose record lacks one ran with that value, so a run that sets it so (a new
# key's default may differ) is the same job. A key missing here that OUT lacks is a difference.
BEFORE_ADDED = {
    "score.lowpass_sigma": None,
    "propose.max_clipped_frac": 1.0,
    "propose.max_frame_clipped_frac": 1.0,
    "propose.max_blockiness": None,
}
MAX_DIFFERENCES = 5  # named in a refusal; the rest are counted


class RunError(RuntimeError):
    """A problem that stops the run before or during its work, with what to do about it."""


def open_output(url: str, overwrite: bool) -> tuple[Output, dict | None]:
    """Check OUT before any work: returns it with the job it holds (None for a fresh OUT).
    OUT holding something that is not an optidel job is refused unless overwrite, which
    empties it. A fresh OUT is created, proving it writable."""
    output = Output(url)
    fs = output.fs
    if fs.exists(output.root) and not fs.isdir(output.root):
        raise RunError(f"{url}: exists and is not a directory")
    files = fs.find(output.root) if fs.exists(output.root) else []
    if overwrite and files:
        fs.rm(output.root, recursive=True)
    elif any(not f.endswith(TMP_SUFFIX) for f in files):
        if not output.exists(JOB_JSON):
            raise RunError(
                f"{url}: output directory is not empty and holds no optidel job "
                "(pass --overwrite to replace it)"
            )
        try:
            return output, output.read_json(JOB_JSON)
        except (OSError, ValueError) as exc:
            raise RunError(f"{url}: cannot read {JOB_JSON} ({exc}); pass --overwrite to replace OUT") from exc
    try:
        fs.makedirs(output.root, exist_ok=True)
        for path in files:  # what a run killed in its first moments left
            if fs.exists(path):
                fs.rm(path)
    except OSError as exc:
        raise RunError(f"{url}: output directory is not writable: {exc}") from exc
    return output, None


def job_record(inputs: Sequence[str], config: Config, listing: Listing, models: dict) -> dict:
    """What identifies a job (see the module docstring); `inputs` are kept to explain a
    listing difference, not compared."""
    return {
        "format": JOB_FORMAT,
        "inputs": list(inputs),
        "listing": {"sources": len(listing), "sha256": listing.sha256},
        "config": {k: v for k, v in _flatten(config.model_dump(mode="json")).items() if k not in VOLATILE_KEYS},
        "models": copy.deepcopy(models),
    }


def differences(recorded: dict, now: dict) -> list[str]:
    """How the job recorded in OUT differs from this run's, one line per difference."""
    if recorded.get("format") != JOB_FORMAT:
        return [f"job format {recorded.get('format')!r} in OUT, {JOB_FORMAT} now"]
    found = []
    if recorded.get("listing") != now["listing"]:
        was, is_ = recorded.get("listing") or {}, now["listing"]
        found.append(
            f"input listing: {was.get('sources')} sources (sha256 {str(was.get('sha256'))[:12]}) from "
            f"{recorded.get('inputs')} in OUT, {is_['sources']} sources (sha256 {is_['sha256'][:12]}) "
            f"from {now['inputs']} now"
        )
    for section, label in (("config", "config key"), ("models", "model")):
        was, is_ = _flatten(recorded.get(section) or {}), _flatten(now[section])
        if section == "config":
            was = {**{k: v for k, v in BEFORE_ADDED.items() if k in is_}, **was}
        for key in sorted(was.keys() | is_.keys()):
            if was.get(key, "(unset)") != is_.get(key, "(unset)"):
                found.append(f"{label} {key}: {_show(was.get(key, '(unset)'))} in OUT, {_show(is_.get(key, '(unset)'))} now")
    return found


def claim(output: Output, recorded: dict | None, job: dict) -> dict | None:
    """Make OUT this job's: record it in a fresh OUT, or check a recorded one is the same job
    and clear what an interrupted pass 2 left. Returns run.json's content when OUT already
    holds this job complete (nothing left to do), else None."""
    if recorded is None:
        output.write_json(JOB_JSON, job)
    else:
        found = differences(recorded, job)
        if found:
            more = f"; and {len(found) - MAX_DIFFERENCES} more" if len(found) > MAX_DIFFERENCES else ""
            raise RunError(
                f"{output.url}: holds a different job: {'; '.join(found[:MAX_DIFFERENCES])}{more} "
                "(pass --overwrite to replace it, or choose another output directory)"
            )
        if output.exists(RUN_JSON) and output.read_json(RUN_JSON).get("status") == "complete":
            return output.read_json(RUN_JSON)
        _clear_unfinished(output)
    output.write_json(RUN_JSON, {"status": "running"})
    return None


def _clear_unfinished(output: Output) -> None:
    """Remove what only a finished run vouches for (shards, their index, manifests) and every
    temporary file; pass-1 parts and the proxy stay."""
    fs = output.fs
    for name in (SHARDS_DIR, INDEX_JSON, MANIFESTS_DIR):
        if output.exists(name):
            fs.rm(output.path(name), recursive=True)
    for path in fs.find(output.root):
        if path.endswith(TMP_SUFFIX):
            fs.rm(path)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _show(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value
