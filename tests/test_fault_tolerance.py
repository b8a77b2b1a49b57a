"""Fault injection: kill/resume equivalence per task, interrupted saves, NaN steps, bad shards, SIGTERM.

Kill/resume (``test_killed_and_resumed_run_equals_an_uninterrupted_one``): each task, at a tiny
size, runs 6 steps with a checkpoint every 2 (epochs of 4 batches, so the resume is mid-epoch and
crosses an epoch boundary); a second run is SIGKILLed at a step between two checkpoints and
resumed with ``--ckpt_path last``. The per-step losses of the resumed run must equal the
uninterrupted run's (≤ 1e-5) and the final weights (and EMA) too (≤ 1e-6). The run that is killed
is a ``python main.py`` subprocess (a SIGKILL must not take pytest down); the others run in-process
(an interpreter start costs more than these tiny runs).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds

from datamodules import shards
from lact_app.callbacks.checkpoint import PARTIAL_SUFFIX, AtomicCheckpointIO
from lact_app.cli import SIGTERM_EXIT_CODE, cli_main
from tests.checkpoints import load_checkpoint
from tests.conftest import REPO_ROOT
from tests.faults import read_losses
from tests.test_cli import run_main
from tasks.base import WarmupCosine
from tests.toy import write_regression_shards, write_toy_config

MAX_STEPS, EVERY, BATCHES_PER_EPOCH = 6, 2, 4
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1,
         "num_sanity_val_steps": 0, "limit_val_batches": 1}


def task_configs(cache: Path) -> dict[str, dict]:
    """Per task: the YAML stacked on ``configs/<task>.yaml`` (tiny model, 4 batches per epoch)."""
    return {
        "lm": {"model": {"init_args": {"backbone": {"dim": 32, "depth": 2, "heads": 2}, "window": 16,
                                       "warmup_steps": 2, "position_buckets": 4,
                                       "fast_weight": {"chunk": 16, "heads": 2, "low_rank": 8}}},
               "data": {"init_args": {"seq_len": 48, "batch_size": 2, "samples_per_epoch": 8,
                                      "shuffle_buffer": 4, "max_eval_windows": 2, "eval_stride": 24,  # lm.yaml's 128 > 48
                                      "cache_dir": str(cache / "lm-cache")}}},
        "nvs": {"model": {"init_args": {"backbone": {"dim": 32, "depth": 2, "heads": 2}, "image_log_every_n_steps": 100}},
                "data": {"init_args": {"batch_size": 2, "samples_per_epoch": 8, "default_scenes": 96,
                                       "cache_dir": str(cache / "toy-cache")}}},
        "video": {"model": {"init_args": {"backbone": {"dim": 32, "depth": 2, "heads": 2}, "patch_size": 4,
                                          "chunk_frames": 2, "sampling_steps": 2, "sample_every_n_steps": 100,
                                          "warmup_steps": 2}},
                  "data": {"init_args": {"num_frames": 8, "image_size": 16, "context_frames": 2, "batch_size": 2,
                                         "samples_per_epoch": 8, "shuffle_buffer": 8,
                                         "cache_dir": str(cache / "video-cache")}},
                  "trainer": {"callbacks": [{"class_path": "lact_app.callbacks.ema.EMA",
                                             "init_args": {"decay": 0.9}}]}},
    }


def fit_args(task: str, tiny: Path, root: Path, losses: Path, *extra: str) -> list[str]:
    return ["fit", "--config", f"configs/{task}.yaml", "--config", str(tiny),
            f"--trainer.default_root_dir={root}", f"--trainer.max_steps={MAX_STEPS}",
            *[f"--trainer.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in QUIET.items()],
            f"--checkpoint.every_n_train_steps={EVERY}",
            "--trainer.callbacks+=tests.faults.RecordLosses", f"--trainer.callbacks.path={losses}", *extra]


def final_state(root: Path) -> dict:
    (version,) = (root / "lightning_logs").iterdir()  # one log folder: the resumed run appended to it
    return load_checkpoint(version / "checkpoints" / "last.ckpt")


def assert_states_equal(resumed: dict, expected: dict, atol: float = 1e-6) -> float:
    """Same step, weights and EMA (``atol``); returns the largest weight or EMA error."""
    assert resumed["global_step"] == expected["global_step"] == MAX_STEPS
    largest = 0.0
    for part in ("state_dict", "ema"):
        assert resumed[part].keys() == expected[part].keys(), part
        for name, value in expected[part].items():
            if value.is_floating_point():
                error = (resumed[part][name] - value).abs().max().item()
                assert error <= atol, f"{part} {name}: max error {error:.3g}"
                largest = max(largest, error)
    return largest


@pytest.fixture
def in_process(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])  # LightningCLI warns about pytest's own argv
    monkeypatch.chdir(REPO_ROOT)  # fit_args name configs/<task>.yaml


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("task", ["lm", "nvs", "video"])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(task, tmp_path, tmp_path_factory, in_process):
    import yaml

    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(task_configs(tmp_path_factory.getbasetemp())[task]))
    kill_step = random.Random(task).choice([s for s in range(EVERY + 1, MAX_STEPS) if s % EVERY])

    cli_main(fit_args(task, tiny, tmp_path / "full", tmp_path / "full.jsonl"))
    killed = run_main(*fit_args(task, tiny, tmp_path / "run", tmp_path / "run.jsonl",
                                "--trainer.callbacks+=tests.faults.KillAt", f"--trainer.callbacks.step={kill_step}"),
                      timeout=240, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert max(read_losses(tmp_path / "run.jsonl")) == kill_step - 1  # it died right after that step
    cli_main(fit_args(task, tiny, tmp_path / "run", tmp_path / "run.jsonl", "--ckpt_path=last"))

    expected, resumed = read_losses(tmp_path / "full.jsonl"), read_losses(tmp_path / "run.jsonl")
    assert sorted(resumed) == sorted(expected) == list(range(MAX_STEPS))
    errors = {step: abs(resumed[step] - expected[step]) for step in expected}
    assert max(errors.values()) <= 1e-5, errors
    weight_error = assert_states_equal(final_state(tmp_path / "run"), final_state(tmp_path / "full"))
    print(f"\n{task}: killed at step {kill_step}, resumed from step {kill_step - kill_step % EVERY}; max "
          f"|loss error| {max(errors.values()):.2e} over steps 0-{MAX_STEPS - 1}, max weight/EMA error {weight_error:.2e}")


# -- toy runs: SIGTERM, NaN steps, interrupted saves -------------------------------------------


@pytest.fixture
def toy_yaml(tmp_path, toy_cache) -> Path:
    return write_toy_config(tmp_path / "toy.yaml", toy_cache, tmp_path / "logs", max_steps=MAX_STEPS)


@pytest.mark.timeout(120)
def test_sigterm_writes_a_checkpoint_and_exits_143(toy_yaml, tmp_path, in_process):
    """Pre-emption at step 3 (no scheduled checkpoint then): last.ckpt holds step 3, exit code 143,
    and ``--ckpt_path last`` finishes the run with the losses of an uninterrupted one."""
    args = ["fit", "--config", str(toy_yaml), "--trainer.callbacks+=tests.faults.RecordLosses"]
    cli_main([*args, f"--trainer.callbacks.path={tmp_path / 'full.jsonl'}", f"--trainer.default_root_dir={tmp_path / 'full'}"])
    losses = f"--trainer.callbacks.path={tmp_path / 'run.jsonl'}"
    stopped = run_main(*args, losses, "--trainer.callbacks+=tests.faults.KillAt", "--trainer.callbacks.step=3",
                       "--trainer.callbacks.signal_name=SIGTERM", check=False)
    assert stopped.returncode == SIGTERM_EXIT_CODE == 143, stopped.stderr[-3000:]
    assert "Stopped by SIGTERM" in stopped.stderr
    last = tmp_path / "logs/lightning_logs/version_0/checkpoints/last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    cli_main([*args, losses, "--ckpt_path=last"])
    assert read_losses(tmp_path / "run.jsonl") == pytest.approx(read_losses(tmp_path / "full.jsonl"), abs=1e-5)
    assert [p.name for p in (tmp_path / "logs/lightning_logs").iterdir()] == ["version_0"]


@pytest.mark.timeout(60)
def test_a_two_step_fit_ends_with_a_checkpoint(toy_yaml, in_process):
    """Mid-epoch end (2 of 4 batches), clock off and a step schedule that never fires: last.ckpt still holds step 2."""
    fit = cli_main(["fit", "--config", str(toy_yaml), "--trainer.max_steps=2", "--checkpoint.every_n_train_steps=5"])
    last_checkpoint = next(cb for cb in fit.trainer.checkpoint_callbacks if cb.save_top_k == 0)
    assert last_checkpoint._train_time_interval is None  # the step schedule replaced the clock
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2


def test_the_clock_default_is_in_print_config(toy_yaml, in_process, capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(toy_yaml), "--print_config"])
    assert "last_checkpoint:\n  train_time_interval: 0:05:00\n" in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_ckpt_path_last_without_a_checkpoint_starts_a_new_fit(toy_yaml, tmp_path, in_process):
    """One command line for the first launch and every relaunch of a pre-emptible job."""
    with pytest.warns(UserWarning, match="no checkpoint under .* yet; starting a new fit"):
        fit = cli_main(["fit", "--config", str(toy_yaml), "--trainer.max_steps=1", "--ckpt_path=last"])
    assert fit.trainer.global_step == 1 and fit.trainer.ckpt_path is None


def test_clock_is_the_default_and_a_schedule_replaces_it(toy_yaml, in_process):
    def clocks(*extra):
        cli = cli_main(["--config", str(toy_yaml), *extra], run=False)
        return [cb._train_time_interval for cb in cli.trainer.checkpoint_callbacks]

    assert [str(t) for t in clocks()] == ["None", "0:05:00"]  # checkpoint: epoch ends; last_checkpoint: 5 min
    assert clocks("--checkpoint.every_n_epochs=2") == [None, None]
    assert [str(t) for t in clocks("--last_checkpoint.train_time_interval=0:00:30")] == ["None", "0:00:30"]


@pytest.mark.timeout(60)
def test_resuming_with_more_steps_stretches_the_schedule(toy_yaml, tmp_path, in_process):
    """4 steps, then resumed to 8: the cosine ends at step 8, not at the first run's step 4."""
    cli_main(["fit", "--config", str(toy_yaml), "--trainer.max_steps=4"])
    resumed = cli_main(["fit", "--config", str(toy_yaml), "--trainer.max_steps=8", "--ckpt_path=last"])
    (scheduler,) = resumed.trainer.lr_scheduler_configs
    assert scheduler.scheduler.lr_lambdas[0].total_steps == 8
    expected = WarmupCosine(2, 8)(7) * resumed.model.hparams.lr  # the lr of the last step taken (7)
    assert torch.load(tmp_path / "logs/lightning_logs/version_0/checkpoints/last.ckpt",
                      weights_only=False)["lr_schedulers"][0]["lr_lambdas"][0]["total_steps"] == 8
    assert resumed.trainer.callback_metrics["lr-AdamW/decay"].item() == pytest.approx(expected, rel=1e-6)


def assert_same_training_state(actual: dict, expected: dict) -> None:
    """Weights and AdamW state (moments and step counts) bit-identical."""
    for name, value in expected["state_dict"].items():
        assert torch.equal(actual["state_dict"][name], value), name
    assert actual["optimizer"]["state"].keys() == expected["optimizer"]["state"].keys()
    for key, state in expected["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(actual["optimizer"]["state"][key][name]), torch.as_tensor(value)), (key, name)


@pytest.mark.timeout(60)
def test_nan_steps_are_skipped_then_the_run_stops(toy_yaml, tmp_path, in_process, capsys):
    """Batches from step 3 on are NaN: each step is skipped and counted, the weights and AdamW
    state stay those from before the fault, and the third skip in a row stops the run (exit 1,
    one message, no traceback); the last checkpoint (step 4, written during the skips) holds the
    weights and optimizer state from before the fault."""
    args = ["fit", "--config", str(toy_yaml), "--checkpoint.every_n_train_steps=2",
            "--model.init_args.max_consecutive_skips=3", "--trainer.callbacks+=tests.faults.PoisonBatches",
            "--trainer.callbacks.step=3"]
    with pytest.raises(SystemExit) as stopped:
        cli_main(args)
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "error: 3 consecutive optimizer steps skipped (steps 3-5" in err and "Traceback" not in err, err
    log_dir = tmp_path / "logs/lightning_logs/version_0"
    before, after = (torch.load(log_dir / f"poison_{when}.pt", weights_only=False) for when in ("before", "after"))
    assert (before["skipped_steps"], after["skipped_steps"]) == (0, 3)
    assert_same_training_state(after, before)
    last = torch.load(log_dir / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 4 and last["skipped_steps"] == 1
    assert_same_training_state({"state_dict": last["state_dict"], "optimizer": last["optimizer_states"][0]}, before)


# -- atomic writes ----------------------------------------------------------------------------


class Interrupted(BaseException):
    """Stands for a kill in the middle of a checkpoint write."""


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

    def dies_half_way(obj, f):
        f.write(b"\x80" * 100)
        raise Interrupted

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(Interrupted):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt" + PARTIAL_SUFFIX]
    assert not [p for p in tmp_path.glob("*.ckpt") if p.name != "last.ckpt"]  # no partial *.ckpt
    io.save_checkpoint({"global_step": 3}, path)  # the next save replaces the leftover
    assert torch.load(path, weights_only=True)["global_step"] == 3 and len(list(tmp_path.iterdir())) == 1


def test_the_cli_writes_checkpoints_atomically(toy_yaml, in_process):
    cli = cli_main(["--config", str(toy_yaml)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# -- bad shards ---------------------------------------------------------------------------------


def write_bad_shards(root: Path) -> dict[str, Path]:
    """Beside 4 good train shards of 8 samples: a corrupt one (random bytes), a truncated one
    (32 samples cut in the middle of the 25th) and an empty one."""
    write_regression_shards(root, "train", n_shards=4, per_shard=8, seed=0)
    bad = {"corrupt": root / "train-000004.tar", "truncated": root / "train-000005.tar", "empty": root / "train-000006.tar"}
    bad["corrupt"].write_bytes(bytes(random.Random(0).randrange(256) for _ in range(5000)))
    with wds.TarWriter(str(bad["truncated"])) as sink:  # one 512-byte header + 512 bytes of json per sample
        for i in range(32):
            sink.write({"__key__": f"trunc{i:02d}", "json": json.dumps({"x": [0.0] * 4, "y": 0.0})})
    bad["truncated"].write_bytes(bad["truncated"].read_bytes()[: 24 * 1024 + 700])
    bad["empty"].write_bytes(b"")
    return bad


def test_bad_shards_in_evaluation_are_warned_once_and_counted(tmp_path, caplog):
    """Two passes over 4 good and 3 bad shards: every good sample is read in each, the truncated
    shard yields samples from before the cut, each bad shard is warned about once
    and each failed read is counted."""
    bad = write_bad_shards(tmp_path)
    counter = shards.SkipCounter()
    loader = shards.eval_loader(shards.resolve_shards(tmp_path, "train"), decode=lambda s: s["__key__"],
                                collate=list, batch_size=4, rank=0, world_size=1, num_workers=0, counter=counter)
    with caplog.at_level("WARNING"):
        passes = [[k for batch in loader for k in batch] for _ in range(2)]
    assert passes[0] == passes[1]
    good = [k for k in passes[0] if k.startswith("train")]
    truncated = [k for k in passes[0] if k.startswith("trunc")]
    assert sorted(good) == [f"train{i:06d}" for i in range(32)]
    # the samples before the cut that the streaming tar reader got to (it reads ahead of the cut)
    assert 0 < len(truncated) < 24 and truncated == [f"trunc{i:02d}" for i in range(len(truncated))]
    warned = [r.getMessage() for r in caplog.records if "unreadable shard" in r.getMessage()]
    assert sorted(w.split(" in ")[1].split(" ")[0] for w in warned) == sorted(str(p) for p in bad.values())
    assert counter.value == 2 * len(bad)  # every failed read counts; warnings only the first time


@pytest.fixture
def shard_warnings(tmp_path):
    """The lines ``datamodules.shards`` logs, in a file: forked DataLoader workers inherit the
    handler and append to it too (pytest's log capture sees only this process)."""
    path = tmp_path / "shards.log"
    handler = logging.FileHandler(path)
    logger = logging.getLogger("datamodules.shards")
    logger.addHandler(handler)
    yield path
    logger.removeHandler(handler)
    handler.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [0, 2])
def test_training_through_bad_shards_completes_and_logs_the_count(workers, tmp_path, toy_cache, in_process,
                                                                  shard_warnings):
    """3 epochs over 4 good and 3 bad shards; with workers, new worker processes every epoch."""
    bad = write_bad_shards(tmp_path / "shards")
    yaml_path = write_toy_config(tmp_path / "toy.yaml", toy_cache, tmp_path / "logs", max_steps=12)
    fit = cli_main(["fit", "--config", str(yaml_path), f"--data.init_args.train_shards={tmp_path / 'shards'}",
                    f"--data.init_args.val_shards={tmp_path / 'shards'}/train-00000[0-1].tar",
                    f"--data.init_args.num_workers={workers}"])
    assert fit.trainer.global_step == 12  # 3 epochs
    warned = [line.split(" in ")[1].split(" ")[0] for line in shard_warnings.read_text().splitlines()
              if "unreadable shard" in line]
    assert sorted(warned) == sorted(str(p) for p in bad.values())  # each bad shard once per run
    skipped = fit.datamodule.skipped_samples
    print(f"\n{len(warned)} bad shards warned once; {skipped} failed reads counted in 3 epochs")
    assert skipped > len(warned)  # bad shards were drawn again (resampling), without new warnings
    assert fit.trainer.callback_metrics["data/skipped_samples"].item() == skipped
