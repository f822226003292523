"""Shared fixtures: one real local Ray for the whole session, and the kvasir-seg data."""

from __future__ import annotations

from pathlib import Path

import pytest

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kvasir-seg"


@pytest.fixture(scope="session")
def kvasir() -> Path:
    if not (KVASIR / "images").is_dir():
        pytest.skip(f"kvasir-seg not found at {KVASIR}")
    return KVASIR


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster, started once: the runner reuses an initialised Ray."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=1 << 30, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second OpenMP thread mostly spins and waits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items):
    """Tests on the real local Ray cluster (end-to-end runs, mostly) are the slow ones: marked
    by the fixture they use, so that no such test can forget its mark."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu") and not _cuda():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def _cuda() -> bool:
    import torch  # only when a gpu test is collected

    return torch.cuda.is_available()
