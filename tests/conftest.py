"""Shared test fixtures: unique instance names, the shared conformance fixtures, GPU marker."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = Path(os.environ.get("SHM_VLA_FIXTURES", REPO.parent / "shared" / "fixtures"))


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def instance():
    """A unique instance name so parallel or leftover segments never collide.

    At teardown every segment of the instance goes: stale ones, and live ones whose
    writer is this test process (rings a test created and did not close).
    """
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    import posix_ipc
    from shm_vla.shm import segment
    for seg in segment.instance_segments(name):
        info = segment.inspect(seg)
        if not info.alive or info.writer_pid == os.getpid():
            try:
                posix_ipc.unlink_shared_memory(seg)
            except posix_ipc.ExistentialError:
                pass


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared conformance fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES
