"""Packing documents into LM windows (the fla / flash-attention ``cu_seqlens`` convention).

Pipeline stages from a stream of documents (token ids ``[n]``, ``<bos>`` first) to batches, each a
deterministic function of the stream (a resumed stream yields the same batches):

- :class:`PackedWindows` (training): documents concatenated in stream order and cut into windows
  of T tokens; a document that does not fit continues in the next window, where the model starts
  it afresh (as an unpacked window past a document's start does). Padding only at the very end of
  the stream; nothing dropped.
- :class:`PackedEvaluation` (validation, test): documents of at most T tokens packed whole; a longer
  document is a batch of its own, its consecutive windows as rows, which the task scores window
  after window with the state carried over in the model's cache.

A window's labels are each token's next token in its document; the position of a document's last
token has no next token (label −100), nor has padding.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Callable

import torch

from lact_app.constants import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


def document_labels(ids: torch.Tensor) -> torch.Tensor:
    """ids: [n] -> labels [n]: the next token, −100 at the last (a document's end is no label)."""
    return torch.cat([ids[1:], ids.new_full((1,), IGNORE_INDEX)])


class WindowBuilder:
    """Pieces of documents → one window of ``seq_len`` tokens with its ``cu_seqlens``.

    Args:
        seq_len: T.
        pad_id: the token that fills a window past its last piece.
        token_bytes: [vocab] UTF-8 bytes of every token (``label_bytes`` of each label).
    """

    def __init__(self, seq_len: int, pad_id: int, token_bytes: torch.Tensor):
        self.seq_len, self.pad_id, self.token_bytes = seq_len, pad_id, token_bytes

    def __call__(self, pieces: list[tuple[torch.Tensor, torch.Tensor]]) -> Batch:
        """(ids, labels) pieces of at most T tokens in all -> input_ids, labels, label_bytes: [T]
        and cu_seqlens: [pieces (+ 1 padding segment) + 1] int32."""
        lengths = [ids.numel() for ids, _ in pieces]
        pad = self.seq_len - sum(lengths)
        ids = torch.cat([p[0] for p in pieces] + [torch.full((pad,), self.pad_id, dtype=torch.long)])
        labels = torch.cat([p[1] for p in pieces] + [torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
        bounds = torch.tensor([0] + lengths + ([pad] if pad else [])).cumsum(0).to(torch.int32)
        real = labels != IGNORE_INDEX
        label_bytes = torch.where(real, self.token_bytes[labels.clamp(min=0)], 0)
        return {"input_ids": ids, "labels": labels, "label_bytes": label_bytes, "cu_seqlens": bounds}


def concat_windows(windows: list[Batch]) -> Batch:
    """Windows → one packed row: input_ids, labels, label_bytes: [1, N·T]; cu_seqlens over the row
    (every window start is a document start)."""
    offsets = [0]
    for w in windows[:-1]:
        offsets.append(offsets[-1] + w["input_ids"].numel())
    batch = {key: torch.cat([w[key] for w in windows])[None] for key in ("input_ids", "labels", "label_bytes")}
    batch["cu_seqlens"] = torch.cat([windows[0]["cu_seqlens"][:1]]
                                    + [w["cu_seqlens"][1:] + o for w, o in zip(windows, offsets)])  # fmt: skip
    return batch


class PackedWindows:
    """Training stage: documents → batches of ``batch_size`` packed windows (see the module docstring).

    Args:
        build: the :class:`WindowBuilder` of T tokens.
        batch_size: windows per batch (one row of ``batch_size · T`` tokens).
        partial: yield the last, incomplete batch at the end of a finite stream.
        shuffle: the windows a long document fills entirely come in random order (``random``,
            seeded per pass like every decoder). Each starts afresh anyway, so only the batches
            change: a few long documents (a book) give batches spread over the whole text, as
            random crops do, instead of consecutive stretches of it.
    """

    def __init__(self, build: WindowBuilder, batch_size: int, partial: bool = False, shuffle: bool = False):
        self.build, self.batch_size, self.partial, self.shuffle = build, batch_size, partial, shuffle

    def windows(self, documents: Iterable[torch.Tensor]) -> Iterator[Batch]:
        """Documents cut into windows of T tokens in stream order (a long document's full windows
        shuffled when ``shuffle``); the last one padded."""
        T, pieces, used = self.build.seq_len, [], 0
        for ids in documents:
            labels = document_labels(ids)
            take = min(T - used, ids.numel())  # the rest of the current window
            pieces.append((ids[:take], labels[:take]))
            used += take
            if used == T:
                yield self.build(pieces)
                pieces, used = [], 0
            full = (ids.numel() - take) // T
            order = random.sample(range(full), full) if self.shuffle else range(full)
            for w in order:
                s = take + w * T
                yield self.build([(ids[s : s + T], labels[s : s + T])])
            tail = take + full * T
            if tail < ids.numel():
                pieces, used = [(ids[tail:], labels[tail:])], ids.numel() - tail
        if pieces:
            yield self.build(pieces)

    def __call__(self, documents: Iterable[torch.Tensor]) -> Iterator[Batch]:
        batch = []
        for window in self.windows(documents):
            batch.append(window)
            if len(batch) == self.batch_size:
                yield concat_windows(batch)
                batch = []
        if batch and self.partial:
            yield concat_windows(batch)


class PackedEvaluation:
    """Evaluation stage: whole documents packed, longer ones a batch of their own (module docstring).

    Args:
        build: the :class:`WindowBuilder` of T tokens.
        batch_size: packed windows per batch.
        document_windows: a long document [n] -> its windows (dicts of [T]), all of them or the
            first ``max_eval_windows``.
        carry_state: the windows are consecutive and scored with the state carried over (one
            batch per document); False: they are independent (strided, each from fresh state) and
            come as batches of ``batch_size`` rows.
    """

    def __init__(
        self,
        build: WindowBuilder,
        batch_size: int,
        document_windows: Callable[[torch.Tensor], list[Batch]],
        *,
        carry_state: bool = True,
    ):
        self.build, self.batch_size, self.document_windows = build, batch_size, document_windows
        self.carry_state = carry_state

    def long_document(self, ids: torch.Tensor) -> Iterator[Batch]:
        """A document of more than T tokens -> its windows as rows [W, T]: one batch flagged
        ``one_document`` (row w + 1 continues row w: the task carries the model's cache from one to
        the next), or batches of ``batch_size`` independent rows."""
        windows = self.document_windows(ids)
        step = len(windows) if self.carry_state else self.batch_size
        for i in range(0, len(windows), step):
            rows = windows[i : i + step]
            batch = {key: torch.stack([w[key] for w in rows]) for key in rows[0]}
            yield {**batch, "one_document": True} if self.carry_state else batch

    def __call__(self, documents: Iterable[torch.Tensor]) -> Iterator[Batch]:
        T, windows, pieces, used = self.build.seq_len, [], [], 0
        for ids in documents:
            if ids.numel() > T:
                yield from self.long_document(ids)
                continue
            if used + ids.numel() > T:
                windows.append(self.build(pieces))
                pieces, used = [], 0
            pieces.append((ids, document_labels(ids)))
            used += ids.numel()
            if len(windows) == self.batch_size:
                yield concat_windows(windows)
                windows = []
        if pieces:
            windows.append(self.build(pieces))
        if windows:
            yield concat_windows(windows)
