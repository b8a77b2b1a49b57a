"""`ShardDataModule`: the webdataset datamodule every task's datamodule derives from.

A subclass implements these hooks:

- ``decode_sample(sample) -> item | None``: raw webdataset sample (a dict of bytes keyed by
  extension, plus ``__key__``/``__url__``) → one decoded item; return None (or raise) for a bad
  sample, which is then skipped with a warning and counted.
- ``decoder(split) -> callable`` (optional): the decode function of one split's loader, e.g. a
  random window or crop in training and a deterministic one in evaluation (default:
  ``decode_sample`` for every split).
- ``collate(items) -> batch``: a list of decoded items → one batch (default: ``default_collate``).
- ``batcher(split) -> stage | None`` (optional): a pipeline stage from the stream of decoded items
  to batches, replacing ``batch_size`` items per ``collate`` (e.g. packing documents into windows).
- ``build_default_dataset(root)``: write the embedded default dataset as
  ``root/{train,val,test}-%06d.tar`` (used when ``train_shards`` is None); bump the class
  attribute ``FORMAT_VERSION`` whenever its format changes, and set ``DEFAULT_NAME``.

Evaluation-time knobs (number of views, rollout length …) belong in the subclass's ``__init__``:
LightningCLI's test/predict take no custom arguments and ``--ckpt_path`` replaces model args.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import lightning.pytorch as pl
from torch.utils.data import default_collate

from datamodules import shards
from datamodules.cache import ensure_built

SPLITS = ("train", "val", "test", "predict")


class ShardDataModule(pl.LightningDataModule):
    """Base datamodule over webdataset shards, with an embedded default dataset.

    Args:
        train_shards: training shards: a directory (its ``train-*.tar`` if any, else all
            ``*.tar``), a glob or brace pattern, or a list of them. None: the embedded default
            dataset (built once into ``cache_dir``), whose val/test splits then also serve as
            defaults for ``val_shards`` / ``test_shards``.
        val_shards: validation shards (same forms). None: the embedded default's val split when
            ``train_shards`` is None, else no validation.
        test_shards: test shards (same forms). None: as for ``val_shards``, with the test split.
        predict_shards: shards to predict on (same forms). None: the test shards.
        batch_size: samples per batch on each rank.
        num_workers: DataLoader worker processes per rank.
        samples_per_epoch: training samples per epoch over all ranks; each rank yields
            ``samples_per_epoch // (batch_size * world_size)`` batches (at least one).
        shuffle_buffer: size of the training shuffle buffer in samples (0 or 1: no shuffling).
        seed: base seed of the training stream (combined with rank, worker, epoch and the
            global step a resumed run starts from).
        cache_dir: where embedded default datasets are built.
        allow_pipe: accept ``pipe:`` shard URLs (they run shell commands).
    """

    DEFAULT_NAME: str = ""
    FORMAT_VERSION: int = 1

    def __init__(
        self,
        train_shards: Optional[Any] = None,
        val_shards: Optional[Any] = None,
        test_shards: Optional[Any] = None,
        predict_shards: Optional[Any] = None,
        batch_size: int = 8,
        num_workers: int = 0,
        samples_per_epoch: int = 1024,
        shuffle_buffer: int = 256,
        seed: int = 0,
        cache_dir: str = "~/.cache/lact-app",
        allow_pipe: bool = False,
    ):
        super().__init__()
        self.shard_specs = dict(zip(SPLITS, (train_shards, val_shards, test_shards, predict_shards)))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.samples_per_epoch, self.shuffle_buffer = samples_per_epoch, shuffle_buffer
        self.seed, self.cache_dir, self.allow_pipe = seed, cache_dir, allow_pipe
        self.skip_counter = shards.SkipCounter()
        self.urls: dict[str, list[str]] = {}

    # -- hooks for subclasses -----------------------------------------------------------------

    def decode_sample(self, sample: dict) -> Any:
        """Decodes one raw webdataset sample; returns None (or raises) when it is bad.

        Not needed when ``decoder`` is overridden for every split.
        """
        raise TypeError(f"{type(self).__name__} must implement decode_sample() or decoder()")

    def decoder(self, split: str) -> Callable[[dict], Any]:
        """The decode function of ``split``'s loader (``"train"``, ``"val"``, ``"test"``, ``"predict"``).

        Default: ``decode_sample`` for every split. It travels to worker processes, so it must be
        picklable (a bound method of this datamodule is).
        """
        # Fail when the loader is built: inside the loader a raising decoder counts as a bad sample.
        if type(self).decode_sample is ShardDataModule.decode_sample:
            raise TypeError(f"{type(self).__name__} must implement decode_sample() or decoder()")
        return self.decode_sample

    def collate(self, items: list[Any]) -> Any:
        """Collates decoded items into a batch."""
        return default_collate(items)

    def batcher(self, split: str) -> Optional[Callable]:
        """The stage from decoded items to batches of ``split`` (None: ``batch_size`` items per
        :meth:`collate`). It must be a deterministic function of the item stream (resumption)."""
        return None

    def build_default_dataset(self, root: Path) -> None:
        """Writes the embedded default dataset as ``root/{train,val,test}-%06d.tar``."""
        raise ValueError(
            f"{type(self).__name__} has no embedded default dataset: set train_shards "
            "(see `python -m datamodules.prepare --help`)."
        )

    # -- shared plumbing ------------------------------------------------------------------------

    @property
    def skipped_samples(self) -> int:
        """Bad samples skipped so far by this process and its workers."""
        return self.skip_counter.value

    def rank_and_world(self) -> tuple[int, int]:
        """(data-parallel rank, data-parallel world size), passed explicitly to the splitters."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
        return kwargs.get("rank", trainer.global_rank), kwargs.get("num_replicas", trainer.world_size)

    def default_dataset_root(self) -> Path:
        """Builds (once, under a file lock) and returns the embedded default dataset's folder."""
        return ensure_built(self.cache_dir, self.DEFAULT_NAME or type(self).__name__.lower(),
                            self.FORMAT_VERSION, self.build_default_dataset)

    def shard_spec(self, split: str) -> Any:
        """The configured spec of ``split``, with the embedded default's fallbacks applied."""
        spec = self.shard_specs[split]
        if split == "predict" and spec is None:
            return self.shard_spec("test")
        if spec is None and self.shard_specs["train"] is None:
            return str(self.default_dataset_root())
        return spec

    def setup(self, stage: str) -> None:
        """Resolves the shards the stage needs, so a missing dataset fails before any compute."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("predict",)}[stage]
        for split in needed:
            spec = self.shard_spec(split)
            if spec is None and split == "val" and stage == "fit":
                continue
            # Predicting falls back to the test shards: pick the test split out of their folder.
            pattern = "test" if split == "predict" and self.shard_specs["predict"] is None else split
            self.urls[split] = shards.resolve_shards(spec, pattern, allow_pipe=self.allow_pipe)

    def batches_per_epoch(self) -> int:
        _, world = self.rank_and_world()
        return max(1, math.floor(self.samples_per_epoch / (self.batch_size * world)))

    def train_dataloader(self):
        rank, _ = self.rank_and_world()
        # On resume Lightning restores the global step before it builds this loader: the stream is
        # reseeded with it, so a resumed run does not replay the samples it started with.
        step = self.trainer.global_step if self.trainer is not None else 0
        return shards.train_loader(
            self.urls["train"], decode=self.decoder("train"), collate=self.collate,
            batch_size=self.batch_size, batches_per_epoch=self.batches_per_epoch(),
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=rank,
            num_workers=self.num_workers, counter=self.skip_counter,
            resume_step=step, batcher=self.batcher("train"),
        )

    def _eval_dataloader(self, split: str):
        if split not in self.urls:
            return []
        rank, world = self.rank_and_world()
        return shards.eval_loader(
            self.urls[split], decode=self.decoder(split), collate=self.collate,
            batch_size=self.batch_size, rank=rank, world_size=world,
            num_workers=self.num_workers, counter=self.skip_counter, batcher=self.batcher(split),
        )

    def val_dataloader(self):
        return self._eval_dataloader("val")

    def test_dataloader(self):
        return self._eval_dataloader("test")

    def predict_dataloader(self):
        return self._eval_dataloader("predict")

    def __getstate__(self) -> dict:
        # Bound hooks (decode_sample, collate) travel to spawned workers; the trainer must not.
        state = self.__dict__.copy()
        state["trainer"] = None
        return state
