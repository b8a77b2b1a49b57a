"""`TextDataModule`: documents from text shards → fixed-length token windows, never packed.

Each window holds tokens of **one** document (``<bos>`` + its tokens), so fast weights, which
ignore document boundaries inside a sequence (LACT_SPEC.md §6.3 item 4), never carry one
document into another: every window starts from fresh state. Windows shorter than ``seq_len``
(the end of a document) are padded and the padding is masked out of the loss (label −100).

- training: one random window of ``seq_len + 1`` tokens per document drawn from the resampled
  stream (the whole document when shorter);
- evaluation: every window of each document in order (inputs ``[s, s + T)``, labels
  ``[s + 1, s + T]``), so each token after ``<bos>`` is predicted exactly once — at most
  ``max_eval_windows`` per document;
- predict: prompts from the command line or a text file (no shards needed).

Batches are dicts ``input_ids: [N, T]``, ``labels: [N, T]`` (−100 = padding) and
``label_bytes: [N, T]`` (UTF-8 bytes of each label token, for bits per byte).
With no shards configured, the embedded default is the running Python's standard library
source (``*.py``, site-packages excluded), split into train/val/test by file.
"""

from __future__ import annotations

import io
import json
import random
import sys
import sysconfig
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ShardDataModule
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
        tokenizer: ``"byte"`` (UTF-8 bytes + <bos>, <pad>: vocab 258) or the path of a
            ``.tiktoken`` BPE ranks file (e.g. GPT-2's; needs the ``tiktoken`` extra).
        max_eval_windows: evaluate at most this many windows per document (its beginning);
            None: all of them.
        prompts: predict: prompts to continue (``\\n`` and ``\\t`` are unescaped).
        prompts_file: predict: a text file with one prompt per line (same escapes).
            Without prompts, predict samples one document from ``<bos>`` alone.
        max_new_tokens: predict: tokens to generate per prompt.
        temperature: predict: sampling temperature (0: greedy).
        top_k: predict: sample among the k most likely tokens only (None: all).
        **kwargs: see ``ShardDataModule`` (shards, batch size in documents, workers, …).
    """

    DEFAULT_NAME = f"python{sys.version_info.major}.{sys.version_info.minor}-stdlib"
    FORMAT_VERSION = 1

    def __init__(
        self,
        seq_len: int = 2048,
        tokenizer: str = "byte",
        max_eval_windows: Optional[int] = None,
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
        self.seq_len, self.max_eval_windows = seq_len, max_eval_windows
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

    def window(self, ids: torch.Tensor, start: int) -> dict[str, torch.Tensor]:
        """Inputs ``ids[start : start + T]`` and their next tokens, padded to T and masked."""
        T = self.seq_len
        piece = ids[start : start + T + 1]
        n = piece.numel() - 1  # labels available
        inputs = torch.full((T,), self.tokenizer.pad_id, dtype=torch.long)
        labels = torch.full((T,), IGNORE_INDEX, dtype=torch.long)
        inputs[: n + 1] = piece[:T]
        labels[:n] = piece[1:]
        label_bytes = torch.zeros(T, dtype=torch.long)
        label_bytes[:n] = self.tokenizer.token_bytes[piece[1:]]
        return {"input_ids": inputs, "labels": labels, "label_bytes": label_bytes}

    def decode_sample(self, sample: dict) -> Optional[list[dict[str, torch.Tensor]]]:
        """A document → its evaluation windows (all, or the first ``max_eval_windows``)."""
        ids = self.document_ids(sample)
        if ids is None:
            return None
        starts = range(0, max(ids.numel() - 1, 1), self.seq_len)[: self.max_eval_windows]
        return [self.window(ids, s) for s in starts]

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
        """Training draws one random window per document; evaluation reads all of them."""
        return self.decode_training_sample if split == "train" else self.decode_sample

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
