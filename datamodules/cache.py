"""The embedded-default dataset cache: build once, under a file lock, rebuild on a format change.

Layout: ``<cache_dir>/<name>/v<format_version>/`` holds the shards plus a ``COMPLETE`` marker
written last, so a crashed build is detected and redone. Every rank calls
:func:`ensure_built`: the first process to take the ``fcntl`` lock builds, the others block on
the lock and then find the marker. (With several nodes and a non-shared ``cache_dir`` each node
builds its own copy, which is what we want.)
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


def dataset_dir(cache_dir: str | os.PathLike, name: str, format_version: int) -> Path:
    """Returns ``<cache_dir>/<name>/v<format_version>`` (``~`` expanded)."""
    return Path(cache_dir).expanduser() / name / f"v{format_version}"


def ensure_built(cache_dir: str | os.PathLike, name: str, format_version: int,
                 build: Callable[[Path], None]) -> Path:
    """Returns the dataset folder, calling ``build(folder)`` first when it is missing or incomplete.

    Args:
        cache_dir: root of the cache.
        name: dataset name (a folder under ``cache_dir``).
        format_version: bump it when the shard format changes; the old version is left alone.
        build: writes the dataset into the (empty) folder it is given.
    """
    root = dataset_dir(cache_dir, name, format_version)
    if (root / MARKER).exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".v{format_version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (root / MARKER).exists():
                _build(root, build)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return root


def _build(root: Path, build: Callable[[Path], None]) -> None:
    log.warning("Building the embedded default dataset in %s (once)", root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    build(root)
    (root / MARKER).write_text("ok\n")
