"""How a stage asks to be run. Each stage class declares `execution` beside itself; the runner's
Ray module (pipeline/raydata.py) reads it, so stages stay free of Ray."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Execution:
    """actor: the stage loads a model once per worker, so it runs on an actor pool of
    ray.actors actors, each with ray.cpus_per_actor CPUs and ray.gpus_per_actor GPUs; otherwise
    it runs as stateless tasks sharing the CPUs the actor pools leave.
    batch_size: rows per call; None means one model batch of sources (ray.model_batch_size)."""

    actor: bool = False
    batch_size: int | None = None


TASK = Execution()
MODEL_ACTOR = Execution(actor=True)

# Rows per forward pass of the Score stage, which computes in micro-batches of this one shape,
# padding the last with blank crops (stages/score.py says why). Here, torch-free, so that the
# driver can size the Score step's batches to a multiple of it (pipeline/pass1.py).
ROWS_PER_FORWARD = 32
