"""The only place that knows Ray: cluster connection and mapping stages onto Ray Data.

Stages are plain classes (`__init__(config)`, optional `setup()`, `__call__(batch)`); here
they become `map_batches` operators, as tasks (cheap, stateless stages) or actor pools (stages
that load a model once per worker).

Retries are bounded by ray.max_retries: a task whose worker dies, or an actor that dies
mid-batch, is retried (a dead actor is restarted and its batch resubmitted) at most that many
times, where Ray Data's defaults retry forever. An exception a stage raises is not retried: it
would raise again (stages record bad sources themselves).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings

import ray

from .config import RayConfig
from .resume import RunError

log = logging.getLogger("optidel")


def connect(config: RayConfig) -> None:
    """Join the cluster at config.address / RAY_ADDRESS, else start a local Ray (the embedded
    default). Reuses a Ray already initialised in this process (tests, notebooks), unless
    config.address names another cluster: then the job would silently run in the wrong place."""
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if config.address and config.address not in ("auto", current):
            raise RunError(
                f"ray.address={config.address}, but this process is already connected to the Ray "
                f"cluster at {current}; call ray.shutdown() first, or leave ray.address unset"
            )
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    log.info("ray: %s", "cluster at " + address if address else "local")


def map_task(
    ds: ray.data.Dataset, stage_cls, kwargs: dict, *, batch_size: int, config: RayConfig, actor_stages: int = 0
):
    """Run a stateless stage as Ray tasks, beside `actor_stages` actor pools of the same plan."""

    def apply(batch):
        return stage_cls(**kwargs)(batch)

    apply.__name__ = stage_cls.__name__
    with _retry_args_allowed():
        return ds.map_batches(
            apply,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=task_cpus(config, actor_stages),
            max_retries=config.max_retries,
        )


def task_cpus(config: RayConfig, actor_stages: int) -> float:
    """CPUs per task: ray.cpus_per_task, or by default one task per cluster CPU, the tasks
    sharing what the actor pools leave (C CPUs, R reserved: tasks of (C - R) / C). Whole CPUs
    per task would idle the CPU beside a fractional actor (on 2 cores: 1 task + 1 actor on 1.5
    CPUs), and more tasks than CPUs slow the actors' start-up, which loads torch, to a crawl.
    A setting that leaves no room for a task would hang Ray Data: refused here, with the cause.
    A cluster with no CPUs yet (an autoscaler adds the nodes) gets ray.cpus_per_task, or 1."""
    total = ray.cluster_resources().get("CPU", 0.0)
    if total == 0:
        return config.cpus_per_task or 1.0
    reserved = actor_stages * config.actors * config.cpus_per_actor
    room = total - reserved
    wanted = config.cpus_per_task
    if wanted is None:
        wanted = math.floor(room / total * 1e4) / 1e4  # Ray counts CPUs to 1e-4
    if wanted <= 0 or wanted > room + 1e-9:
        raise RunError(
            f"the Ray cluster has {total:g} CPUs; {actor_stages} actor pool(s) of ray.actors={config.actors} x "
            f"ray.cpus_per_actor={config.cpus_per_actor:g} leave {room:g}, too few for tasks of "
            f"{wanted:g} CPUs: lower ray.actors, ray.cpus_per_actor or ray.cpus_per_task"
        )
    return wanted


def map_actors(ds: ray.data.Dataset, stage_cls, kwargs: dict, *, batch_size: int, config: RayConfig):
    """Run a model stage on an actor pool: the model loads once per actor, on a GPU when
    gpus_per_actor > 0."""
    extra = {"num_gpus": config.gpus_per_actor} if config.gpus_per_actor else {}
    with _retry_args_allowed():
        return ds.map_batches(
            stage_cls,
            fn_constructor_kwargs=kwargs,
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=config.actors,
            num_cpus=config.cpus_per_actor,
            max_restarts=config.max_retries,
            max_task_retries=config.max_retries,
            **extra,
        )


@contextlib.contextmanager
def _retry_args_allowed():
    """Ray 2.60 warns that extra remote args (our retry bounds) go away in Ray 2.64, yet has
    no named parameter for them; silenced here only, so other deprecations still show."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        yield


def device(config: RayConfig) -> str:
    return "cuda" if config.gpus_per_actor > 0 else "cpu"
