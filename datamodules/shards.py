"""Webdataset plumbing shared by every datamodule.

Shard specs, explicit rank/worker splitting (never webdataset's environment-based detection),
a deterministic resampled training stream and an exact-once evaluation stream, and the
bad-sample accounting that lets a long run skip broken samples instead of dying.

Everything that travels into DataLoader workers is a picklable class (spawn/forkserver safe).
"""

from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Optional, Union

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

ShardSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


# ---------------------------------------------------------------------------------------------
# Shard specs
# ---------------------------------------------------------------------------------------------


def _expand_one(spec: str, split: Optional[str], allow_pipe: bool) -> list[str]:
    """Expands one shard spec (a directory, a glob, a brace pattern, a file or a URL)."""
    if spec.startswith("pipe:"):
        if not allow_pipe:
            raise ValueError(
                f"Shard spec {spec!r} is a 'pipe:' URL, which runs a shell command. "
                "Pass allow_pipe=True (datamodule argument --data.init_args.allow_pipe=true) "
                "if you trust it."
            )
        return list(braceexpand.braceexpand(spec))
    if "://" in spec:
        return list(braceexpand.braceexpand(spec))
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        split_tars = sorted(glob.glob(os.path.join(path, f"{split}-*.tar"))) if split else []
        return split_tars or sorted(glob.glob(os.path.join(path, "*.tar")))
    urls = []
    for pattern in braceexpand.braceexpand(path):
        urls.extend(sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern])
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        raise ValueError(f"Shard spec {spec!r}: file(s) not found: {missing[:3]}")
    return urls


def resolve_shards(spec: Optional[ShardSpec], split: Optional[str] = None, *,
                   allow_pipe: bool = False) -> list[str]:
    """Turns a shard spec into a non-empty list of shard URLs.

    Args:
        spec: a directory (its ``<split>-*.tar`` if any, else all ``*.tar``, sorted), a glob, a
            brace pattern (``a-{000000..000003}.tar``), a file or URL, or a list of those.
        split: the split name used to pick ``<split>-*.tar`` inside a directory.
        allow_pipe: accept ``pipe:`` URLs (they run shell commands).

    Raises:
        ValueError: when the spec is empty or matches no shard, with a hint on what to fix.
    """
    if spec is None:
        raise ValueError(f"No shards given for split {split!r}: set the datamodule's shard argument.")
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    urls = [u for s in specs for u in _expand_one(os.fspath(s), split, allow_pipe)]
    if not urls:
        raise ValueError(
            f"Shard spec {spec!r} (split {split!r}) matches no .tar shard. Give a directory of "
            "shards, a glob or brace pattern, or a list of them; write shards with "
            "`python -m datamodules.prepare`."
        )
    return urls


# ---------------------------------------------------------------------------------------------
# Splitting by rank and worker
# ---------------------------------------------------------------------------------------------


def worker_id_and_count() -> tuple[int, int]:
    """Returns (worker id, number of workers) of the current DataLoader worker, (0, 1) in the main process."""
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class NodeSplitter:
    """Keeps every ``world_size``-th item starting at ``rank`` (rank and world size given explicitly)."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        for i, item in enumerate(src):
            if i % self.world_size == self.rank:
                yield item


class WorkerSplitter:
    """Keeps the items of the current DataLoader worker (every item in the main process)."""

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        worker, workers = worker_id_and_count()
        for i, item in enumerate(src):
            if i % workers == worker:
                yield item


class SampleSplitter:
    """Keeps samples ``i`` with ``i % (world_size * workers) == rank * workers + worker``.

    Used for evaluation when a split has fewer shards than ranks × workers: every rank and worker
    reads all shards and keeps its own share of the samples, so each sample is seen exactly once.
    """

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        worker, workers = worker_id_and_count()
        total, mine = self.world_size * workers, self.rank * workers + worker
        for i, item in enumerate(src):
            if i % total == mine:
                yield item


# ---------------------------------------------------------------------------------------------
# Bad samples
# ---------------------------------------------------------------------------------------------


class SkipCounter:
    """A process-shared counter of skipped samples (shared with DataLoader workers).

    Created in the main process and handed to workers inside the pipeline, so counts made in
    workers are visible to the datamodule (and logged by the task as ``data/skipped_samples``).
    """

    def __init__(self):
        self._value = multiprocessing.Value("q", 0)

    def add(self, n: int = 1) -> None:
        with self._value.get_lock():
            self._value.value += n

    @property
    def value(self) -> int:
        return int(self._value.value)


class WarnAndCount:
    """A webdataset exception handler: logs the error, counts it, and continues."""

    def __init__(self, counter: SkipCounter):
        self.counter = counter

    def __call__(self, exn: BaseException) -> bool:
        log.warning("Skipping unreadable shard data: %r", exn)
        self.counter.add()
        return True


class DecodeOrSkip:
    """Pipeline stage: ``decode(sample)`` for each raw sample; skips (warns + counts) bad ones.

    ``decode`` returns the decoded item, or None (or raises) for a bad sample.
    """

    def __init__(self, decode: Callable[[dict], Any], counter: SkipCounter):
        self.decode, self.counter = decode, counter

    def __call__(self, src: Iterable[dict]) -> Iterator[Any]:
        for sample in src:
            try:
                item = self.decode(sample)
                reason = "decoder returned None"
            except Exception as exn:  # noqa: BLE001 - a bad sample must never kill a long run
                item, reason = None, repr(exn)
            if item is None:
                log.warning("Skipping bad sample %s from %s: %s",
                            sample.get("__key__"), sample.get("__url__"), reason)
                self.counter.add()
                continue
            yield item


# ---------------------------------------------------------------------------------------------
# Training stream
# ---------------------------------------------------------------------------------------------


class ResampledShardStream(IterableDataset):
    """An infinite stream of ``{"url": shard}`` drawn with replacement, deterministic per seed.

    The RNG seed combines ``seed``, ``rank``, the DataLoader worker id, ``resume_step`` (the
    global step a resumed run starts from, so it does not replay its first samples) and
    ``epoch`` (bumped by :class:`EpochLoader` in the main process before workers start).
    """

    def __init__(self, urls: list[str], seed: int, rank: int, resume_step: int = 0):
        super().__init__()
        self.urls, self.seed, self.rank, self.resume_step = list(urls), seed, rank, resume_step
        self.epoch = 0

    def rng(self, salt: str = "shards") -> random.Random:
        """A fresh RNG for this rank, worker, resume step and epoch (``salt`` separates uses)."""
        worker, _ = worker_id_and_count()
        return random.Random(f"{salt}/{self.seed}/{self.rank}/{worker}/{self.resume_step}/{self.epoch}")

    def __iter__(self) -> Iterator[dict]:
        rng = self.rng()
        while True:
            yield {"url": rng.choice(self.urls)}


class SeededShuffle:
    """Pipeline stage: a shuffle buffer seeded like the stream it follows (deterministic)."""

    def __init__(self, bufsize: int, stream: ResampledShardStream):
        self.bufsize, self.stream = bufsize, stream

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        if self.bufsize <= 1:
            return iter(src)
        initial = min(self.bufsize, 100)
        return wds.shuffle(self.bufsize, initial, rng=self.stream.rng("shuffle"))(src)


class EpochLoader(wds.WebLoader):
    """A WebLoader that bumps its stream's epoch before each pass (fresh samples every epoch).

    Workers receive a copy of the stream when the pass starts, so the bump must happen here, in
    the main process.
    """

    def __init__(self, dataset: wds.DataPipeline, stream: ResampledShardStream, **kw: Any):
        super().__init__(dataset, batch_size=None, **kw)
        self.stream = stream

    def __iter__(self):
        self.stream.epoch += 1
        return super().__iter__()


def _samples_stage(counter: SkipCounter):
    return wds.tarfile_to_samples(handler=WarnAndCount(counter))


def train_loader(urls: list[str], *, decode: Callable, collate: Callable, batch_size: int,
                 batches_per_epoch: int, shuffle_buffer: int, seed: int, rank: int,
                 num_workers: int, counter: SkipCounter, resume_step: int = 0,
                 batcher: Optional[Callable] = None) -> EpochLoader:
    """Builds the training loader: resampled shards → shuffle → decode → batch, ``batches_per_epoch`` per rank.

    ``batcher``: the stage from decoded items to batches (e.g. packing documents into windows);
    default ``wds.batched(batch_size, collate)``.

    Every rank yields exactly ``batches_per_epoch`` batches per epoch (``with_epoch``), so DDP
    ranks never wait on each other at an epoch boundary.
    """
    stream = ResampledShardStream(urls, seed, rank, resume_step=resume_step)
    pipeline = wds.DataPipeline(
        stream,
        _samples_stage(counter),
        SeededShuffle(shuffle_buffer, stream),
        DecodeOrSkip(decode, counter),
        batcher or wds.batched(batch_size, collation_fn=collate, partial=False),
    )
    loader = EpochLoader(pipeline, stream, num_workers=num_workers,
                         persistent_workers=False, pin_memory=torch.cuda.is_available())
    return loader.with_epoch(batches_per_epoch).with_length(batches_per_epoch, silent=True)


# ---------------------------------------------------------------------------------------------
# Evaluation stream
# ---------------------------------------------------------------------------------------------


def eval_loader(urls: list[str], *, decode: Callable, collate: Callable, batch_size: int,
                rank: int, world_size: int, num_workers: int,
                counter: SkipCounter, batcher: Optional[Callable] = None) -> wds.WebLoader:
    """Builds an evaluation loader that yields each sample exactly once across ranks and workers.

    ``batcher``: as for :func:`train_loader` (default ``wds.batched(batch_size, collate)``).

    With at least ranks × workers shards, shards are split by rank and then by worker; with
    fewer, every rank and worker reads all shards and keeps its own share of the samples.
    Ranks may get different numbers of batches: metrics must sync at epoch end.
    """
    if len(urls) >= world_size * max(num_workers, 1):
        stages = [wds.SimpleShardList(urls), NodeSplitter(rank, world_size), WorkerSplitter(),
                  _samples_stage(counter)]
    else:
        stages = [wds.SimpleShardList(urls), _samples_stage(counter), SampleSplitter(rank, world_size)]
    pipeline = wds.DataPipeline(
        *stages,
        DecodeOrSkip(decode, counter),
        batcher or wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())
