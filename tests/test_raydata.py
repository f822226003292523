"""Joining Ray: a Ray already initialised in this process is reused, but not in place of an
explicitly named, different cluster."""

from __future__ import annotations

import pytest
import ray

from optidel.pipeline.config import RayConfig
from optidel.pipeline.raydata import connect
from optidel.pipeline.resume import RunError


def test_connect_reuses_this_processs_ray_but_refuses_another_address(ray_local):
    current = ray.get_runtime_context().gcs_address
    connect(RayConfig())
    connect(RayConfig(address=current))
    assert ray.get_runtime_context().gcs_address == current
    with pytest.raises(RunError, match=r"ray.address=10.0.0.1:6379, but this process is already connected"):
        connect(RayConfig(address="10.0.0.1:6379"))
