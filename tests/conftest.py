"""Shared fixtures: the repository root on sys.path (``tests.toy`` class paths) and a toy cache."""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
# One intra-op thread per process (set before torch is imported, inherited by the `python main.py`
# subprocesses): the test models are tiny, and two 2-process runs' OpenMP pools on a 2-core machine
# oversubscribe it, which made steps up to 60x slower in practice.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory) -> Path:
    """A cache folder shared by the session's toy runs (the embedded toy dataset is built once)."""
    return tmp_path_factory.mktemp("toy-cache")
