"""A toy task and datamodule that exercise the app plumbing end to end in seconds.

Importable as ``tests.toy`` from the repository root (``class_path: tests.toy.ToyTask``), which is
where the CLI tests run ``python main.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from datamodules.base import ShardDataModule
from datamodules.prepare.writer import ShardSink
from tasks.base import LaCTTask

IN_DIM = 4


def regression_sample(key: str, generator: torch.Generator) -> dict:
    """A webdataset sample ``{"__key__", "json"}`` with x: [IN_DIM] and y = sum(x) (a scalar)."""
    x = torch.randn(IN_DIM, generator=generator)
    return {"__key__": key, "json": json.dumps({"x": x.tolist(), "y": float(x.sum())})}


def write_regression_shards(root: Path, split: str, n_shards: int, per_shard: int, seed: int) -> None:
    """Writes ``root/<split>-%06d.tar``: ``n_shards`` shards of ``per_shard`` samples each."""
    generator = torch.Generator().manual_seed(seed)
    with ShardSink(root, split, maxcount=per_shard) as sink:
        for i in range(n_shards * per_shard):
            sink.write(regression_sample(f"{split}{i:06d}", generator))


class ToyDataModule(ShardDataModule):
    """Random regression samples; the embedded default has 4 train, 2 val and 2 test shards.

    Args:
        samples_per_shard: samples in each shard of the embedded default dataset.
        **kwargs: see ``ShardDataModule``.
    """

    DEFAULT_NAME = "toy"
    FORMAT_VERSION = 1

    def __init__(self, samples_per_shard: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.samples_per_shard = samples_per_shard

    def decode_sample(self, sample: dict):
        record = json.loads(sample["json"])
        x = torch.tensor(record["x"], dtype=torch.float32)
        if x.shape != (IN_DIM,):
            return None
        return x, torch.tensor([record["y"]], dtype=torch.float32)

    def build_default_dataset(self, root: Path) -> None:
        for split, n_shards, seed in (("train", 4, 0), ("val", 2, 1), ("test", 2, 2)):
            write_regression_shards(root, split, n_shards, self.samples_per_shard, seed)


class ToyTask(LaCTTask):
    """A 2-block MLP regressor.

    Args:
        hidden: width of the blocks.
        **kwargs: see ``LaCTTask``.
    """

    def __init__(self, hidden: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.model = nn.Sequential(
            nn.Sequential(nn.Linear(IN_DIM, hidden), nn.LayerNorm(hidden), nn.GELU()),
            nn.Sequential(nn.Linear(hidden, hidden), nn.GELU()),
            nn.Linear(hidden, 1),
        )

    def blocks(self) -> list[nn.Module]:
        return [self.model[0], self.model[1]]

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.model(x), y)
        self.log(f"{stage}/loss", loss, prog_bar=True, sync_dist=stage != "train",
                 batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx):
        self.log_throughput("train", batch[0].shape[0], "samples")
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def predict_step(self, batch, batch_idx):
        out = self.model(batch[0])
        torch.save(out, self.predictions_dir() / f"batch{batch_idx:04d}-rank{self.global_rank}.pt")
        return out


def write_toy_config(path: Path, cache_dir: Path, root_dir: Path, max_steps: int = 4) -> Path:
    """Writes a toy YAML (model, data, trainer) for ``python main.py`` / ``cli_main``."""
    path.write_text(f"""\
model:
  class_path: tests.toy.ToyTask
  init_args:
    hidden: 8
    warmup_steps: 2
data:
  class_path: tests.toy.ToyDataModule
  init_args:
    batch_size: 4
    samples_per_epoch: 16
    shuffle_buffer: 8
    cache_dir: {cache_dir}
trainer:
  max_steps: {max_steps}
  default_root_dir: {root_dir}
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  num_sanity_val_steps: 0
""")
    return path


# -- a `python -m datamodules.prepare` kind, for testing the prepare registry ------------------

HELP = "toy regression samples from JSON files"


def add_arguments(parser) -> None:
    parser.add_argument("--maxcount", type=int, default=2, help="samples per shard")


def _validate(sample: dict):
    record = json.loads(sample["json"])
    return None if len(record.get("x", [])) == IN_DIM else f"x must have {IN_DIM} values"


def run(args) -> int:
    """Writes each SRC JSON file (``{"x": [...], "y": ...}``) as one sample."""
    with ShardSink(args.out, args.split, maxcount=args.maxcount, validate=_validate) as sink:
        for src in args.src:
            sink.write({"__key__": Path(src).stem, "json": Path(src).read_text()})
    return 0
