"""Webdataset plumbing shared by every datamodule.

Shard specs, explicit rank/worker splitting (never webdataset's environment-based detection),
a deterministic resampled training stream and an exact-once evaluation stream, and the
bad-sample accounting that lets a long run skip broken samples instead of dying.

Everything that travels into DataLoader workers is a picklable class (spawn/forkserver safe).
"""

from __future__ import annotations

import glob
import itertools
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

from lact_app.rng import rng_states, seed_rngs, set_rng_states

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


class WarnOncePerShard:
    """A webdataset exception handler for unreadable shards (corrupt, truncated, empty, missing).

    Every failed read is counted (``counter``; with resampling a bad shard may be drawn many
    times), but each shard is warned about once per loader, i.e. once per run rather than once
    per epoch: the flags live in shared memory because workers are new processes every epoch.
    """

    def __init__(self, urls: Sequence[str], counter: SkipCounter):
        self.index = {url: i for i, url in enumerate(urls)}
        self.warned = multiprocessing.Array("b", max(1, len(urls)))
        self.counter = counter

    def shard_of(self, exn: BaseException) -> Optional[str]:
        """The shard URL webdataset appended to the exception's args (None if it did not)."""
        return next((a for a in reversed(exn.args) if isinstance(a, str) and a in self.index), None)

    def __call__(self, exn: BaseException) -> bool:
        self.counter.add()
        url = self.shard_of(exn)
        with self.warned.get_lock():
            first = url is None or not self.warned[self.index[url]]
            if url is not None:
                self.warned[self.index[url]] = 1
        if first:
            log.warning("Skipping unreadable shard data in %s (warned once per shard): %r",
                        url or "an unknown shard", exn.args[0] if exn.args else exn)
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


class PrivateRNG:
    """A context with the data pipeline's own global RNG states, kept apart from the model's.

    Without workers, decoders that draw from the global RNGs (random windows, crops, view
    choices) run in the training process: inside this context their draws neither consume nor
    depend on the model's RNG (dropout, diffusion noise), so both stay a function of the step.
    """

    def __init__(self, seed: int):
        self.seed, self.states, self.outer = seed, None, None

    def __enter__(self) -> None:
        self.outer = rng_states(include_cuda=False)
        if self.states is None:
            seed_rngs(self.seed)
        else:
            set_rng_states(self.states)

    def __exit__(self, *exc: Any) -> None:
        self.states = rng_states(include_cuda=False)
        set_rng_states(self.outer)


class ResampledShardStream(IterableDataset):
    """An infinite stream of ``{"url": shard}`` drawn with replacement: a deterministic function
    of ``seed``, ``rank``, the worker's role and ``epoch``.

    :class:`ResumableLoader` sets ``epoch`` and ``start`` (batches of the epoch consumed before
    this pass, non-zero on a resumed run) in the main process before each pass; workers receive
    a copy of the stream when the pass starts. Each pass also seeds its process's global RNGs
    from the same values, so decoders that draw from them are deterministic too.
    """

    def __init__(self, urls: list[str], seed: int, rank: int):
        super().__init__()
        self.urls, self.seed, self.rank = list(urls), seed, rank
        self.epoch, self.start = 0, 0

    def role(self) -> tuple[int, int]:
        """(role, workers): the worker of an uninterrupted pass this worker stands in for.

        The DataLoader takes batches from its workers round robin starting at worker 0, so batch
        ``j`` of a pass comes from worker ``j % workers``; a pass resumed at batch ``start``
        takes its first batch from worker 0, which must therefore play worker ``start % workers``.
        """
        worker, workers = worker_id_and_count()
        return (worker + self.start) % workers, workers

    def batches_to_skip(self) -> int:
        """Batches of this worker's role among the ``start`` batches already consumed."""
        role, workers = self.role()
        return len(range(role, self.start, workers))

    def rng(self, salt: str = "shards") -> random.Random:
        """A fresh RNG for this rank, worker role and epoch (``salt`` separates uses)."""
        role, _ = self.role()
        return random.Random(f"{salt}/{self.seed}/{self.rank}/{role}/{self.epoch}")

    def __iter__(self) -> Iterator[dict]:
        seed_rngs(self.rng("decode").getrandbits(63))
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


class SkipConsumed:
    """Pipeline stage (last): drops the batches a resumed pass already consumed, in the worker
    that made them. They are read and decoded again (the stream after them depends on the
    shuffle buffer and on which samples were bad) but not trained on."""

    def __init__(self, stream: ResampledShardStream):
        self.stream = stream

    def __call__(self, src: Iterable[Any]) -> Iterator[Any]:
        return itertools.islice(src, self.stream.batches_to_skip(), None)


class ResumableLoader(wds.WebLoader):
    """The training loader: ``batches_per_epoch`` batches per pass, resumable mid-epoch.

    A stateful dataloader in Lightning's sense: a checkpoint's loop state keeps
    :meth:`state_dict` (the epoch and the batches of it handed out), and a resumed fit calls
    :meth:`load_state_dict` before its first pass, which then continues the epoch where it
    stopped. The loader has a length, so Lightning does not prefetch: batches handed out are
    batches trained on when a checkpoint is written.
    """

    def __init__(self, dataset: wds.DataPipeline, stream: ResampledShardStream,
                 batches_per_epoch: int, **kw: Any):
        super().__init__(dataset, batch_size=None, **kw)
        self.stream, self.batches_per_epoch = stream, batches_per_epoch
        self.consumed, self.resuming = 0, False

    def __len__(self) -> int:
        return self.batches_per_epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.stream.epoch, "batches": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.epoch, self.consumed = state["epoch"], state["batches"]
        self.resuming = self.consumed < self.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        if not self.resuming:  # a new epoch (fresh samples); a resumed one keeps its number
            self.stream.epoch += 1
            self.consumed = 0
        self.resuming = False
        self.stream.start = self.consumed
        scope = PrivateRNG(self.stream.rng("loader").getrandbits(63))
        return self._batches(scope)

    def _batches(self, scope: PrivateRNG) -> Iterator[Any]:
        with scope:
            batches = self.iterator1()
        while self.consumed < self.batches_per_epoch:
            with scope:
                batch = next(batches, None)
            if batch is None:
                return
            self.consumed += 1
            yield batch


def _samples_stage(urls: Sequence[str], counter: SkipCounter):
    return wds.tarfile_to_samples(handler=WarnOncePerShard(urls, counter))


def train_loader(urls: list[str], *, decode: Callable, collate: Callable, batch_size: int,
                 batches_per_epoch: int, shuffle_buffer: int, seed: int, rank: int,
                 num_workers: int, counter: SkipCounter, batcher: Optional[Callable] = None) -> ResumableLoader:
    """Builds the training loader: resampled shards → shuffle → decode → batch, ``batches_per_epoch`` per rank.

    ``batcher``: the stage from decoded items to batches (e.g. packing documents into windows);
    default ``wds.batched(batch_size, collate)``. A resumed pass replays it (the skipped batches
    are made again), so a stateful batcher resumes exactly too.

    Every rank yields exactly ``batches_per_epoch`` batches per epoch, so DDP ranks never wait on
    each other at an epoch boundary. The stream is a function of (seed, rank, worker, epoch) and
    the position in the epoch, so a resumed run sees the batches an uninterrupted one would
    (with the same ``num_workers``).
    """
    stream = ResampledShardStream(urls, seed, rank)
    stages = [
        stream,
        _samples_stage(urls, counter),
        SeededShuffle(shuffle_buffer, stream),
        DecodeOrSkip(decode, counter),
        batcher or wds.batched(batch_size, collation_fn=collate, partial=False),
        SkipConsumed(stream),
    ]
    return ResumableLoader(wds.DataPipeline(*stages), stream, batches_per_epoch, num_workers=num_workers,
                           persistent_workers=False, pin_memory=torch.cuda.is_available())


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
                  _samples_stage(urls, counter)]
    else:
        stages = [wds.SimpleShardList(urls), _samples_stage(urls, counter), SampleSplitter(rank, world_size)]
    pipeline = wds.DataPipeline(
        *stages,
        DecodeOrSkip(decode, counter),
        batcher or wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    return wds.WebLoader(pipeline, batch_size=None, num_workers=num_workers,
                         pin_memory=torch.cuda.is_available())
