"""The command line: ``python main.py {fit,validate,test,predict} --config configs/<task>.yaml``.

``cli_main(args, run=False)`` returns the CLI with ``.model``, ``.datamodule`` and ``.trainer``
built but not run (tests and external tools use it).

The model is any ``LightningModule`` and the data any ``LightningDataModule`` named by class path
(``class_path`` / ``init_args`` in YAML; ``--config`` stacks, right-most wins): ``lact_app``
imports neither ``tasks`` nor ``datamodules`` (DESIGN.md §2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lact_app.callbacks import TestMetricsJSON
from lact_app.callbacks.checkpoint import AtomicCheckpointIO, LastCheckpoint, newest_checkpoint, run_log_dir
from lact_app.callbacks.faults import RunStopped

TRAINER_DEFAULTS = {
    "accelerator": "cpu",
    "devices": 1,
    "precision": "32-true",
    "log_every_n_steps": 10,
}

CHECKPOINT_DEFAULTS = {
    "checkpoint.filename": "epoch{epoch:03d}-step{step:06d}",
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.save_last": True,
    # last.ckpt is shared with ``last_checkpoint``: rewrite it rather than add last-v1.ckpt
    "checkpoint.enable_version_counter": False,
    "lr_monitor.logging_interval": "step",
}

#: ``checkpoint`` options that set its own schedule; any of them turns the clock of
#: ``last_checkpoint`` off (the user's schedule takes the place of the time default).
CHECKPOINT_TRIGGERS = ("every_n_train_steps", "every_n_epochs", "train_time_interval")

#: Exit code of a fit stopped by SIGTERM after writing its checkpoint (128 + SIGTERM, as a
#: shell reports a process killed by it): a job script can tell pre-emption from completion.
SIGTERM_EXIT_CODE = 143

# Values computed by the datamodule and fed to the model when classes are instantiated, as
# (source, target, compute_fn); the source "data" is the instantiated datamodule. A target the
# chosen model class does not have is ignored by jsonargparse (tests/test_cli.py pins this), so one
# list serves every task. Empty today: the LM's vocab_size stays explicit (padded vocabularies such
# as 50304 > 50257 are common) and LMTask.setup checks it against the tokenizer's.
DATA_TO_MODEL_LINKS: list[tuple[str, str, Optional[Callable[[Any], Any]]]] = []


class LaCTCLI(LightningCLI):
    """LightningCLI with LaCT's callbacks, defaults and argument links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.link_arguments("checkpoint.dirpath", "last_checkpoint.dirpath")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TestMetricsJSON, "test_metrics")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        self.link_task_arguments(parser)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # Kept for before_instantiate_classes; a dict or Namespace carries no command-line options.
        self.command_line = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """With ``--ckpt_path`` Lightning rebuilds the model from the checkpoint's hyperparameters,
        which replace the config's model section (after parsing, before this hook). Model arguments
        given explicitly on the command line still win, so evaluation settings (an FVD detector,
        LPIPS weights, render chunk size, sampling steps) can change at test time instead of being
        silently ignored."""
        overrides = model_arguments(self.command_line)
        if self.subcommand and overrides and self.config[self.subcommand].get("ckpt_path"):
            self.config = self.parser.parse_args([self.subcommand, *overrides], namespace=self.config.clone())
        config = self.config[self.subcommand] if self.subcommand else self.config
        if any(config.checkpoint.get(name) for name in CHECKPOINT_TRIGGERS):
            config.last_checkpoint.train_time_interval = None
        if self.subcommand == "fit" and config.get("ckpt_path"):
            self.resume_in_run_folder(config)

    def resume_in_run_folder(self, config) -> None:
        """``--ckpt_path last`` → the newest checkpoint of the run (in ``checkpoint.dirpath``, else
        in the default logger's ``version_*/checkpoints`` or, without a logger, in
        ``<root>/checkpoints``); none yet: a fresh fit, so one command line serves the first
        launch and every relaunch of a pre-emptible job. A fit resumed from a checkpoint under
        ``<root>/lightning_logs/version_N/checkpoints/`` logs to ``version_N`` again (same
        TensorBoard run, curves continue) when the default logger would write under ``<root>``."""
        root_dir = Path(config.trainer.default_root_dir or os.getcwd())
        root = root_dir / "lightning_logs"
        if config.ckpt_path == "last":
            folders = [Path(config.checkpoint.dirpath)] if config.checkpoint.dirpath else \
                [*sorted(root.glob("version_*/checkpoints")), root_dir / "checkpoints"]
            newest = newest_checkpoint(folders)
            if newest is None:
                rank_zero_warn(f"--ckpt_path last: no checkpoint under {root_dir} yet; starting a new fit.")
                config.ckpt_path = None
                return
            config.ckpt_path = str(newest)
        log_dir = run_log_dir(config.ckpt_path)
        if config.trainer.logger in (None, True) and log_dir is not None and log_dir.parent == root.resolve():
            config.trainer.logger = Namespace(class_path="lightning.pytorch.loggers.TensorBoardLogger",
                                              init_args=Namespace(save_dir=str(root.parent), name=root.name,
                                                                  version=log_dir.name))

    def instantiate_classes(self) -> None:
        """Builds the model, datamodule and trainer; a constructor's ``ValueError`` (a bad config
        value) exits like any other parser error, with its message and no traceback (set
        ``JSONARGPARSE_DEBUG=1`` to get the traceback)."""
        try:
            super().instantiate_classes()
        except ValueError as err:
            self.parser.error(f"invalid configuration: {root_cause(err)}", ex=err)
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # Lightning's default writer
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def link_task_arguments(self, parser: LightningArgumentParser) -> None:
        """Links datamodule values to model arguments (``DATA_TO_MODEL_LINKS``)."""
        for source, target, compute_fn in DATA_TO_MODEL_LINKS:
            parser.link_arguments(source, target, compute_fn=compute_fn, apply_on="instantiate")


def model_arguments(args: list[str]) -> list[str]:
    """The ``--model…`` options of a command line (``--model.x=v`` or ``--model.x v``), in order."""
    picked, take_next = [], False
    for arg in args:
        if take_next:
            picked.append(arg)
            take_next = False
        elif arg == "--model" or arg.startswith(("--model.", "--model=")):
            picked.append(arg)
            take_next = "=" not in arg
    return picked


def root_cause(err: BaseException) -> BaseException:
    """The innermost explicitly chained cause of ``err``: jsonargparse wraps a constructor's error
    in a long "Does not validate against any of the Union subtypes" report that repeats the config."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def cli_main(args: Optional[list[str]] = None, run: bool = True) -> LaCTCLI:
    """Builds (and with ``run=True`` runs) the CLI; ``args`` default to ``sys.argv[1:]``.

    With ``run=False`` no subcommand is expected: ``cli_main(["--config", "x.yaml"], run=False)``.
    """
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")
    try:
        return LaCTCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )
    except SIGTERMException:
        print("Stopped by SIGTERM; last.ckpt was written. Resume with --ckpt_path last.", file=sys.stderr)
        sys.exit(SIGTERM_EXIT_CODE)
    except RunStopped as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
