"""Joining Ray (a Ray already initialised in this process is reused, but not in place of an
explicitly named, different cluster), the priority of a local Ray's workers, and sizing tasks
beside the actor pools."""

from __future__ import annotations

import heapq
import os
import subprocess
import sys

import numpy as np
import pytest
import ray

from optidel.pipeline.config import RayConfig
from optidel.pipeline.raydata import connect, task_cpus
from optidel.pipeline.resume import RunError


def test_connect_reuses_this_processs_ray_but_refuses_another_address(ray_local):
    current = ray.get_runtime_context().gcs_address
    connect(RayConfig())
    connect(RayConfig(address=current))
    assert ray.get_runtime_context().gcs_address == current
    with pytest.raises(RunError, match=r"ray.address=10.0.0.1:6379, but this process is already connected"):
        connect(RayConfig(address="10.0.0.1:6379"))


def test_tasks_default_to_one_per_cpu_sharing_what_actors_leave(ray_local):
    # ray_local has 2 CPUs: with one Score actor of 0.5 CPU, 2 tasks of 0.75 fill the other 1.5.
    assert task_cpus(RayConfig(), actor_stages=0) == 1.0
    assert task_cpus(RayConfig(), actor_stages=1) == 0.75
    assert task_cpus(RayConfig(actors=2), actor_stages=1) == 0.5
    assert task_cpus(RayConfig(cpus_per_task=0.25), actor_stages=2) == 0.25


def test_settings_that_leave_no_cpu_for_tasks_are_refused_not_hung(ray_local):
    with pytest.raises(RunError, match=r"the Ray cluster has 2 CPUs; 1 actor pool\(s\) of ray.actors=4 x ray.cpus_per_actor=0.5 leave 0"):
        task_cpus(RayConfig(actors=4), actor_stages=1)
    with pytest.raises(RunError, match="too few for tasks of 1.75 CPUs"):
        task_cpus(RayConfig(cpus_per_task=1.75), actor_stages=1)


@pytest.mark.slow
def test_a_local_rays_workers_are_not_deprioritised_against_other_processes():
    # A fresh process: connect must start the Ray itself, not reuse one. Ray's default
    # niceness of 15 would let any busy process on the machine starve the job's workers.
    probe = (
        "import os, ray\n"
        "from optidel.pipeline.config import RayConfig\n"
        "from optidel.pipeline.raydata import connect\n"
        "connect(RayConfig())\n"
        "print(ray.get(ray.remote(lambda: os.nice(0)).remote()), os.nice(0))\n"
    )
    without_ray_address = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=without_ray_address)
    assert done.returncode == 0, done.stderr[-2000:]
    worker, driver = done.stdout.split()[-2:]
    assert worker == driver == "0"


def test_an_argument_several_tasks_share_is_put_in_the_object_store_once(ray_local):
    """Passed as itself to each task, Ray would store a shared argument (a verdict, a plan's
    rows) again for every task. The tasks still get the value, and small values go as they are."""
    from optidel.pipeline import raydata

    shared = np.arange(10**5)
    calls = [(offset, shared) for offset in range(3)]
    sent = raydata._shared_once(calls)
    refs = {call[1] for call in sent}
    assert len(refs) == 1 and isinstance(next(iter(refs)), ray.ObjectRef)
    assert [call[0] for call in sent] == [0, 1, 2]  # an int is passed as itself
    assert raydata._shared_once([(1, np.arange(3))])[0][1].tolist() == [0, 1, 2]  # used once: as itself
    assert list(raydata.run_tasks(heapq.nsmallest, calls, RayConfig())) == [[], [0], [0, 1]]
