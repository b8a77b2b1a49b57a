"""Shared timing helpers for the benchmarks (not tests: they measure and write JSON)."""

from __future__ import annotations

import json
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def in_fresh_process(threads: int, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` in a new process using ``threads`` torch threads (0: torch's default).

    Each setting starts from an empty heap: its peak RSS is its own, and a long setting is not
    pushed out of memory by what the allocator kept from the previous ones. A child that dies
    (e.g. killed for memory) raises ``BrokenProcessPool`` instead of hanging.
    """
    initializer = torch.set_num_threads if threads else None
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=(threads,) if threads else ()) as pool:
        return pool.submit(fn, *args).result()


def matmul_peak_gflops(batch: int = 8, n: int = 1024, repeats: int = 5) -> float:
    """This machine's practical fp32 peak: a fixed large bmm (batch × n³), median of ``repeats``."""
    a, b = torch.randn(batch, n, n), torch.randn(batch, n, n)
    return 2 * batch * n**3 / median_seconds(lambda: torch.bmm(a, b), repeats) / 1e9


def machine_info() -> dict:
    """What the numbers were measured on."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (GiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A Markdown table of ``rows`` (README-ready); "—" where a row lacks a column (an older row
    kept by ``--append`` from before the column existed)."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "—")) for c in columns]
        print("| " + " | ".join(cells) + " |")
