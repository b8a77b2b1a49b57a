"""`TextDataModule`: documents from text shards → LM windows, packed (``pack``) or one document each.

Packed (``pack=True``, the default of ``configs/lm.yaml``; see :mod:`datamodules.packing`): a batch
is one row ``[1, batch_size · seq_len]`` of ``batch_size`` windows filled with whole documents
(``<bos>`` + tokens) in stream order, with ``cu_seqlens`` (the model computes every document as if
alone: fresh fast weights, attention and RoPE positions from its start). A document that does not
fit continues in the next window, started afresh there; padding only at the very end of a stream.

- training: the resampled stream of documents, packed;
- validation / test: documents of at most ``seq_len`` tokens packed whole; a longer one is a batch
  of its own (its consecutive windows as rows, flagged ``one_document``) that the task scores
  window after window carrying the model's cache, so every token is scored with all its context.

Unpacked (``pack=False``, for ablations), each window holds tokens of **one** document and
windows shorter than ``seq_len`` are padded:

- training: one random window of ``seq_len + 1`` tokens per document drawn from the resampled
  stream (the whole document when shorter);
- evaluation: every window of each document in order (inputs ``[s, s + T)``, labels
  ``[s + 1, s + T]``), each starting from fresh state.

Either way each token after ``<bos>`` is a label exactly once in evaluation; validation scores at
most ``max_eval_windows`` windows of a document (its beginning), test all of them.
Predict: prompts from the command line or a text file (no shards needed).

Batches are dicts ``input_ids``, ``labels`` (−100 = no next token: padding, a document's last
token) and ``label_bytes`` (UTF-8 bytes of each label token, for bits per byte), ``[N, T]``, plus
``cu_seqlens`` when packed. With no shards configured, the embedded default is the running
Python's standard library source (``*.py``, site-packages excluded), split into train/val/test by
file.
"""

from __future__ import annotations

import io
import json
import random
import sys
import sysconfig
import zlib
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ShardDataModule
from datamodules.packing import PackedEvaluation, PackedWindows, WindowBuilder
from datamodules.prepare.text import write_text_shards
from datamodules.tokenizers import build_tokenizer
from lact_app.constants import IGNORE_INDEX

#: Percent of the standard library's files in the embedded validation and test splits.
STDLIB_VAL_PERCENT = STDLIB_TEST_PERCENT = 2


def stdlib_files() -> tuple[Path, list[Path]]:
    """(stdlib root, its ``*.py`` files outside site-packages / dist-packages, sorted)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"site-packages", "dist-packages"}
    files = [p for p in sorted(root.rglob("*.py")) if excluded.isdisjoint(p.relative_to(root).parts)]
    return root, files


def stdlib_split(relative_path: str) -> str:
    """A file's split, fixed by a hash of its path (a file never straddles two splits)."""
    bucket = zlib.crc32(relative_path.encode()) % 100
    if bucket < STDLIB_VAL_PERCENT:
        return "val"
    return "test" if bucket < STDLIB_VAL_PERCENT + STDLIB_TEST_PERCENT else "train"


def unescape(prompt: str) -> str:
    """Prompts given on one line may spell newlines and tabs as ``\\n`` and ``\\t``."""
    return prompt.replace("\\n", "\n").replace("\\t", "\t")


class TextDataModule(ShardDataModule):
    """Text shards (one document per sample, see ``python -m datamodules.prepare text``) as LM windows.

    Args:
        seq_len: tokens per training / evaluation window T.
        pack: pack documents into windows (``cu_seqlens``); ``batch_size`` then counts windows
            of ``seq_len`` per batch, concatenated into one row. False: one document per window,
            ``batch_size`` documents per batch.
        tokenizer: ``"byte"`` (UTF-8 bytes + <bos>, <pad>: vocab 258) or the path of a
            ``.tiktoken`` BPE ranks file (e.g. GPT-2's; needs the ``tiktoken`` extra).
        max_eval_windows: validation scores at most this many windows per document (its
            beginning); None: all of them. Test always scores every token.
        eval_stride: how evaluation scores a document longer than ``seq_len``. None: its
            consecutive windows one after the other with the model's state carried over (every
            token sees its whole document, as in one pass). An int s (1 … ``seq_len``): windows of
            ``seq_len`` every s tokens, each from fresh state, each scoring only the labels the
            previous one did not (its last s), so every token sees ``seq_len − s`` … ``seq_len``
            tokens of context: the context the model was trained with.
        prompts: predict: prompts to continue (``\\n`` and ``\\t`` are unescaped).
        prompts_file: predict: a text file with one prompt per line (same escapes).
            Without prompts, predict samples one document from ``<bos>`` alone.
        max_new_tokens: predict: tokens to generate per prompt.
        temperature: predict: sampling temperature (0: greedy).
        top_k: predict: sample among the k most likely tokens only (None: all).
        **kwargs: see ``ShardDataModule`` (shards, batch size, workers, …).
    """

    DEFAULT_NAME = f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib"
    FORMAT_VERSION = 1

    def __init__(
        self,
        seq_len: int = 2048,
        pack: bool = False,
        tokenizer: str = "byte",
        max_eval_windows: Optional[int] = None,
        eval_stride: Optional[int] = None,
        prompts: Optional[list[str]] = None,
        prompts_file: Optional[str] = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if seq_len < 1 or (max_eval_windows is not None and max_eval_windows < 1):
            raise ValueError(f"seq_len and max_eval_windows must be >= 1, got {seq_len}, {max_eval_windows}")
        if eval_stride is not None and not 1 <= eval_stride <= seq_len:
            raise ValueError(f"eval_stride must be None or 1 … seq_len={seq_len}, got {eval_stride}")
        self.seq_len, self.pack, self.max_eval_windows, self.eval_stride = seq_len, pack, max_eval_windows, eval_stride
        self.tokenizer = build_tokenizer(tokenizer)
        self.prompts, self.prompts_file = list(prompts or []), prompts_file
        self.generation = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k}

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size (the LM's ``vocab_size`` must be at least this)."""
        return self.tokenizer.vocab_size

    # -- documents → windows ----------------------------------------------------------------------

    def document_ids(self, sample: dict) -> Optional[torch.Tensor]:
        """``<bos>`` + the document's tokens: [n] int64 (pre-tokenized ids when they match), None if empty."""
        meta = json.loads(sample["json"]) if "json" in sample else {}
        if "ids.npy" in sample and meta.get("tokenizer") == self.tokenizer.name:
            ids = torch.from_numpy(np.load(io.BytesIO(sample["ids.npy"])).astype(np.int64))
        else:
            ids = self.tokenizer.encode(sample["txt"].decode("utf-8"))
        if ids.numel() == 0:
            return None
        return torch.cat([torch.tensor([self.tokenizer.bos_id]), ids])

    def window(self, ids: torch.Tensor, start: int, first_label: int = 0) -> dict[str, torch.Tensor]:
        """Inputs ``ids[start : start + T]`` and their next tokens, padded to T and masked (also the
        labels before position ``first_label``: context only)."""
        T = self.seq_len
        piece = ids[start : start + T + 1]
        n = piece.numel() - 1  # labels available
        inputs = torch.full((T,), self.tokenizer.pad_id, dtype=torch.long)
        labels = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        inputs[: n + 1] = piece[:T]
        labels[first_label:n] = piece[1 + first_label :]
        label_bytes = torch.zeros(T, dtype=torch.long)
        label_bytes[first_label:n] = self.tokenizer.token_bytes[piece[1 + first_label :]]
        return {"input_ids": inputs, "labels": labels, "label_bytes": label_bytes}

    def document_windows(self, ids: torch.Tensor, limit: Optional[int] = None) -> list[dict[str, torch.Tensor]]:
        """A document's evaluation windows (the first ``limit``; None: all): consecutive ones, or
        with ``eval_stride`` s one every s tokens, each after the first scoring its last s labels.

        Every label of the document is scored exactly once either way.
        """
        T, labels = self.seq_len, ids.numel() - 1
        stride = self.eval_stride or T
        # a window starts while the previous one (at start − stride) left labels unscored
        starts = [0] + [p for p in range(stride, max(labels, 1), stride) if p - stride + T < labels]
        return [self.window(ids, p, first_label=0 if p == 0 else T - stride) for p in starts[:limit]]

    def decode_sample(self, sample: dict) -> Optional[list[dict[str, torch.Tensor]]]:
        """A document → its validation windows (all, or the first ``max_eval_windows``)."""
        ids = self.document_ids(sample)
        return None if ids is None else self.document_windows(ids, self.max_eval_windows)

    def decode_test_sample(self, sample: dict) -> Optional[list[dict[str, torch.Tensor]]]:
        """A document → all its windows (test scores every token)."""
        ids = self.document_ids(sample)
        return None if ids is None else self.document_windows(ids)

    def decode_training_sample(self, sample: dict) -> Optional[list[dict[str, torch.Tensor]]]:
        """A document → one window at a uniformly random start."""
        ids = self.document_ids(sample)
        if ids is None:
            return None
        return [self.window(ids, random.randrange(max(1, ids.numel() - self.seq_len)))]

    def collate(self, items: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        """Documents' windows → one batch of windows: dict of [N, T]."""
        windows = [w for item in items for w in item]
        return {key: torch.stack([w[key] for w in windows]) for key in windows[0]}

    def decoder(self, split: str):
        """Packed: every split decodes documents (the batcher packs them). Unpacked: training draws
        one random window per document; validation reads up to ``max_eval_windows``, test all."""
        if self.pack:
            return self.document_ids
        return {"train": self.decode_training_sample, "test": self.decode_test_sample}.get(split, self.decode_sample)

    def batcher(self, split: str):
        """Packed: documents → packed batches (:mod:`datamodules.packing`); unpacked: the default."""
        if not self.pack or split == "predict":
            return None
        build = WindowBuilder(self.seq_len, self.tokenizer.pad_id, self.tokenizer.token_bytes)
        if split == "train":
            return PackedWindows(build, self.batch_size, shuffle=True)
        limit = self.max_eval_windows if split == "val" else None
        return PackedEvaluation(build, self.batch_size, partial(self.document_windows, limit=limit),
                                carry_state=self.eval_stride is None)  # fmt: skip

    # -- predict ------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage != "predict":  # prompts need no shards
            super().setup(stage)

    def prompt_texts(self) -> list[str]:
        """The prompts: ``prompts`` then the lines of ``prompts_file``; [""] (``<bos>`` alone) if none."""
        texts = list(self.prompts)
        if self.prompts_file is not None:
            lines = Path(self.prompts_file).expanduser().read_text(encoding="utf-8").splitlines()
            texts += [line for line in lines if line.strip()]
        return [unescape(t) for t in texts] or [""]

    def prompt_item(self, text: str) -> dict:
        """A predict batch: the prompt, its ids [1, P] (with <bos>) and the generation settings."""
        ids = torch.cat([torch.tensor([self.tokenizer.bos_id]), self.tokenizer.encode(text)])
        return {"prompt": text, "input_ids": ids[None], **self.generation}

    def predict_dataloader(self) -> DataLoader:
        items = [self.prompt_item(t) for t in self.prompt_texts()]
        return DataLoader(items, batch_size=None, num_workers=0)

    # -- embedded default -----------------------------------------------------------------------

    def build_default_dataset(self, root: Path) -> None:
        """The standard library's ``*.py`` files, one document each, split by file."""
        stdlib, files = stdlib_files()
        by_split: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
        for path in files:
            by_split[stdlib_split(str(path.relative_to(stdlib)))].append(path)
        for split, paths in by_split.items():
            write_text_shards(paths, root, split, root=stdlib, maxcount=200)
