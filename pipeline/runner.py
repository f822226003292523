"""`optidel run`: list the pool, pass 1 on Ray, the selection, pass 2 on Ray into shards,
then the manifests and run.json."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata

import numpy as np

from optidel import __version__
from ..manifests import schema
from ..manifests.layout import RUN_JSON, WORK_DIR, Output
from ..stages.propose import Proposer, resolve_proposer
from ..stages.weights import file_sha256
from ..stages.write import shards_table
from . import pass1, pass2, proxy_training, ray_logs, raydata, resume
from .config import Config
from .inputs import VideoSampling, iter_sources
from .listing import Listing
from .partitions import PartStore
from .resume import RunError  # the run's error type, imported from here by the CLI
from .selection import plan as selection_plan
from .selection import write as selection_write
from .selection.selectors import selector

log = logging.getLogger("optidel")

PACKAGES = ("torch", "torchvision", "ray", "segment-anything", "timm", "webdataset", "pyarrow", "numpy", "pillow", "av", "faiss-cpu", "pycocotools", "scikit-image")


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        start = time.perf_counter()
        log.info("%s ...", name)
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.info("%s done in %.1f s", name, self.seconds[name])


def run(inputs: list[str], out: str, config: Config) -> dict:
    """Run the whole job, or resume it from what OUT holds (pipeline/resume.py); returns
    run.json's content."""
    # The listing is written before OUT may be created, and only the driver reads it.
    with tempfile.TemporaryDirectory(prefix="optidel-listing-") as scratch:
        return _run(inputs, out, config, os.path.join(scratch, LISTING_FILE))


LISTING_FILE = "listing.parquet"


def _run(inputs: list[str], out: str, config: Config, listing_path: str) -> dict:
    started = datetime.datetime.now(datetime.timezone.utc)
    timer = Timer()
    models = _check_models(config)  # a bad checkpoint fails here, before the pool is read
    with timer.stage("list"):  # before OUT is created: a missing input must leave no OUT behind
        sampling = VideoSampling(config.ingest.video_fps, config.ingest.video_max_frames)
        listing = Listing.write(iter_sources(inputs, sampling), listing_path)
    if not len(listing):
        raise RunError(f"no image or video sources found in {inputs}")
    output, recorded = resume.open_output(out, config.overwrite)
    log.info("pool: %d sources", len(listing))
    finished = resume.claim(output, recorded, resume.job_record(inputs, config, listing, models))
    if finished is not None:
        log.info("%s already holds this job, complete: nothing to do", out)
        return finished
    raydata.connect(config.ray, logs=_logs_dir(output))

    store = PartStore(output, len(listing), config.ingest.partition_size)
    reused = {"pass1_partitions": store.n_partitions}
    if not selector(config.selector).needs_scores:
        with timer.stage("pass1"):
            reused["pass1_partitions_reused"] = len(store.done())
            pass1.ingest_only(listing, config, store)
    else:
        proposer = resolve_proposer(config.propose)
        proposals = None  # the pool's proposals, when training proposed every source already
        if config.score.proxy == "self":
            with timer.stage("train_proxy"):
                models["proxy"], proposals = _self_trained_proxy(listing, config, proposer, output, store)
            reused["proxy"] = models["proxy"].pop("reused")
        with timer.stage("pass1"):
            reused["pass1_partitions_reused"] = len(store.done())
            # Scoring the proxy's proposals, not proposing again: its sample was the whole pool.
            reused["pass1_proposals"] = proposals is not None
            pass1.scored(listing, config, proposer, models["proxy"]["path"], store, proposals=proposals)
    with timer.stage("select"):
        plan = selection_plan.plan(store, config)
    with timer.stage("pass2"):
        samples, records = pass2.compose_and_write(plan, config, output)
    with timer.stage("manifests"):
        selection_write.sources(output, plan.duplicates, store, config)
        n_candidates = selection_write.patches(output, plan, store, config)
        plan.chosen.ranks.remove()  # their last reader done
        output.write_manifest("samples", schema.to_table("samples", samples))
        output.write_manifest("shards", shards_table(records))

    info = {
        "status": "complete",
        "optidel_version": __version__,
        "started": started.isoformat(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "inputs": list(inputs),
        "output": out,
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "models": models,
        "counts": {
            "sources": sum(plan.by_status.values()),
            "by_status": plan.by_status,
            "candidate_patches": n_candidates,
            "selected_patches": int(np.sum(plan.patches.columns["selected"])),
            "samples": len(samples["sample_key"]),
            "samples_target": plan.accounting["samples_target"],
            "shortfall": plan.accounting["samples_target"] - len(samples["sample_key"]),
            "shards": len(records),
        },
        "v_information": {k: v for k, v in plan.accounting.items() if k not in ("n_ok", "samples", "samples_target")},
        "timings_s": timer.seconds,
        "reused": reused,
    }
    output.write_json(RUN_JSON, info)
    return info


def _logs_dir(output: Output) -> str | None:
    """OUT/logs/ for Ray's log files where OUT is on a local file system (they are written by
    plain file handles); elsewhere they stay in Ray's session directory."""
    from fsspec.implementations.local import LocalFileSystem

    return output.path(ray_logs.LOGS_DIR) if isinstance(output.fs, LocalFileSystem) else None


def _check_models(config: Config) -> dict:
    """Resolve the proposer and proxy, and load any checkpoint once, so a missing or wrong
    file is reported before the pool is read."""
    if not selector(config.selector).needs_scores:
        return {}
    from ..stages import propose

    propose.check_weights(config.propose)
    if config.propose.proposer == propose.AUTO:
        log.info("proposer auto -> %s", resolve_proposer(config.propose).name)
    models = {"proposer": propose.proposer_info(config.propose)}
    if config.score.proxy != "self":
        from ..stages import mae, score  # torch: a proxy file is loaded here, to fail early

        spec = score.proxy_spec(config.score)
        mae.load_proxy(config.score.proxy, spec)
        models["proxy"] = score.proxy_info(config.score.proxy, spec)
    return models


PROXY_FILE = "proxy.pt"
PROXY_RECORD = "proxy.json"  # proxy.pt's sha256 and spec, and what it was trained on, written after it


def _self_trained_proxy(listing: Listing, config: Config, proposer: Proposer, output: Output, store: PartStore) -> tuple[dict, list | None]:
    """The proxy this job trained before (a resumed run), or a newly trained one, with the
    pool's proposals when its training sample was the whole pool (pass1.TrainingSample)."""
    path = output.path(WORK_DIR, PROXY_FILE)
    if output.exists(WORK_DIR, PROXY_RECORD) and output.exists(WORK_DIR, PROXY_FILE):
        record = output.read_json(f"{WORK_DIR}/{PROXY_RECORD}")
        if file_sha256(path) == record["sha256"]:
            log.info("proxy: reusing %s", path)
            return {**_recorded_info(path, record), "trained_on_crops": record["trained_on_crops"], "reused": True}, None
    # Parts scored by a proxy that is gone must not mix with the new proxy's scores.
    store.clear()
    info, proposals = _train_proxy(listing, config, proposer, output)
    return {**info, "reused": False}, proposals


def _train_proxy(listing: Listing, config: Config, proposer: Proposer, output: Output) -> tuple[dict, list | None]:
    from fsspec.implementations.local import LocalFileSystem

    # Score actors load the checkpoint by path: it must be where every worker can read it.
    if not isinstance(output.fs, LocalFileSystem):
        raise RunError(f"{output.url}: --proxy self needs OUT on a local or shared file system")
    sample = pass1.training_crops(listing, config, proposer)
    crops = sample.crops
    log.info("proxy: training a small MAE on %d crops, %d steps, in a Ray task", len(crops), config.score.mae.train_steps)
    path = output.path(WORK_DIR, PROXY_FILE)
    try:
        trained = proxy_training.train(crops, config, path)
    except raydata.StageFailure as exc:
        raise RunError(f"training the proxy failed: {exc}") from exc
    log.debug("proxy: trained by process %d", trained.pid)
    record = {"sha256": trained.sha256, "spec": trained.info["spec"], "trained_on_crops": int(len(crops))}
    output.write_json(f"{WORK_DIR}/{PROXY_RECORD}", record)
    return {**trained.info, "trained_on_crops": int(len(crops))}, sample.proposals


def _recorded_info(path: str, record: dict) -> dict:
    """score.proxy_info of a proxy this job trained, from its record, without torch. A record
    written before the spec was kept in it has none: the checkpoint is read for it then."""
    if "spec" not in record:
        from ..stages import score

        return score.proxy_info(path)
    return {"path": str(path), "sha256": record["sha256"], "spec": record["spec"]}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found
