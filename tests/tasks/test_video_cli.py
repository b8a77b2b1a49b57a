"""The video task end to end through the CLI: fit (a learning test) → test → predict on the embedded
clips and on ../shared/data/video, the reference-scale config at reduced width, and a 2-process
FSDP2 fit → resume → test (``python main.py`` subprocesses)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lact_app.callbacks.ema import EMA
from lact_app.cli import cli_main
from tests.checkpoints import assert_resumed_one_step, load_checkpoint
from tests.conftest import REPO_ROOT

REAL = REPO_ROOT.parent / "shared" / "data" / "video"
SCALE = REPO_ROOT / "configs" / "scale" / "video_1.3b.yaml"
CPU_TRAINER = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32-true",
               "--trainer.strategy=auto"]


def write_config(path: Path, cache: Path, root: Path, max_steps: int, data_extra: str = "") -> Path:
    """A tiny video config: 8 frames of 16×16, chunks of 2 frames, d = 64, 2 blocks."""
    path.write_text(f"""\
model:
  class_path: tasks.video.VideoTask
  init_args: {{backbone: {{dim: 64, depth: 2, heads: 2}}, patch_size: 4, chunk_frames: 2, shift: 1.0,
               sampling_steps: 3, sample_every_n_steps: 40, lr: 0.003, warmup_steps: 10, weight_decay: 0.0}}
data:
  class_path: datamodules.video.VideoDataModule
  init_args: {{num_frames: 8, image_size: 16, context_frames: 2, batch_size: 8, samples_per_epoch: 320,
               shuffle_buffer: 64, cache_dir: {cache}{data_extra}}}
trainer:
  max_steps: {max_steps}
  default_root_dir: {root}
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 10
  num_sanity_val_steps: 0
  limit_val_batches: 2
  limit_test_batches: 2
  limit_predict_batches: 2
  callbacks:
    - class_path: lact_app.callbacks.ema.EMA
      init_args: {{decay: 0.9}}
""")
    return path


def run_main(*args: str, timeout: int = 400) -> None:
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    result = subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def version_dir(root: Path, version: int) -> Path:
    return root / "lightning_logs" / f"version_{version}"


@pytest.fixture(scope="module")
def video_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "video-cache"  # shared with every module of the session


@pytest.fixture(scope="module")
def trained(tmp_path_factory, video_cache, monkeypatch_module):
    """One trained run on the embedded clips, with the validation loss before and after training."""
    tmp = tmp_path_factory.mktemp("video-fit")
    config = write_config(tmp / "video.yaml", video_cache, tmp / "logs", max_steps=120)
    monkeypatch_module.setattr(sys, "argv", ["main.py"])
    before = cli_main(["validate", "--config", str(config)]).trainer.callback_metrics["val/loss"].item()
    fit = cli_main(["fit", "--config", str(config)])
    after = fit.trainer.callback_metrics["val/loss"].item()
    print(f"\nvideo learning test: val/loss {before:.4f} (untrained) -> {after:.4f} after 120 steps")
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    return {"config": config, "before": before, "after": after, "last": last, "trainer": fit.trainer}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.timeout(400)
def test_fit_learns_on_embedded_clips(trained):
    assert trained["last"].is_file()
    assert trained["after"] < 0.6 * trained["before"], (trained["before"], trained["after"])
    events = list(Path(trained["trainer"].log_dir).glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000  # scalars plus the generated / continuation GIFs
    metrics = trained["trainer"].callback_metrics  # samples vs validation clips, logged every validation
    assert all(0 < metrics[f"val/sample_{name}_ratio"] < 100 for name in ("hf", "motion")), metrics


@pytest.mark.timeout(300)
def test_test_writes_continuation_curve(trained):
    tested = cli_main(["test", "--config", str(trained["config"]), "--ckpt_path", str(trained["last"])])
    folder = Path(tested.trainer.log_dir)
    curve = json.loads((folder / "test_continuation.json").read_text())
    assert curve["clips"] == 16 and curve["context_frames"] == 2 and len(curve["psnr_per_frame"]) == 6
    metrics = json.loads((folder / "test_metrics.json").read_text())
    assert {"test/loss", "test/loss_t0.50", "test/continuation_psnr", "test/continuation_ssim"} <= set(metrics)
    # better than predicting a constant grey for the same 16 clips (≈ 9.5 dB; the model: ≈ 11.6 dB)
    import torch

    from lact_app.metrics import psnr

    videos = torch.cat([batch["video"] for _, batch in zip(range(2), tested.datamodule.test_dataloader())])
    clips = videos[:, 2:]
    grey = psnr(torch.full_like(clips, 0.5).flatten(0, 1), clips.flatten(0, 1)).mean().item()
    assert clips.shape[0] == curve["clips"] and metrics["test/continuation_psnr"] > grey + 0.5, grey
    # the trivial baselines, on the same future frames of the same clips
    baselines = {f"test/baseline/{name}_{m}" for name in ("copy_last", "mean_context") for m in ("psnr", "ssim")}
    assert baselines <= set(metrics) and set(curve["baselines"]) == {"copy_last", "mean_context"}
    copy_last = psnr(videos[:, 1:2].expand_as(clips).flatten(0, 1), clips.flatten(0, 1)).mean().item()
    assert metrics["test/baseline/copy_last_psnr"] == pytest.approx(copy_last, rel=1e-4)
    assert curve["baselines"]["copy_last"]["psnr"] == pytest.approx(copy_last, rel=1e-4)
    print("video test: continuation", {k: round(v, 3) for k, v in metrics.items() if "continuation" in k or "baseline" in k})


@pytest.mark.timeout(300)
def test_test_reports_fvd_with_a_local_detector(trained, tmp_path):
    import torch

    from tests.tasks.test_video_fvd import PooledFeatures

    detector = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(PooledFeatures()).save(str(detector))
    tested = cli_main(["test", "--config", str(trained["config"]), "--ckpt_path", str(trained["last"]),
                       f"--model.init_args.fvd_detector={detector}"])
    metrics = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    assert metrics["test/fvd"] > 0


@pytest.mark.timeout(300)
def test_predict_writes_mp4_and_gif(trained):
    predicted = cli_main(["predict", "--config", str(trained["config"]), "--ckpt_path", str(trained["last"]),
                          "--data.init_args.batch_size=2", "--data.init_args.predict_frames=10"])
    folder = Path(predicted.trainer.log_dir) / "predictions"
    mp4s, gifs = sorted(folder.glob("*.mp4")), sorted(folder.glob("*.gif"))
    assert len(mp4s) == len(gifs) == 4
    from datamodules.video_io import VideoBytes, probe
    assert len(VideoBytes(mp4s[0].read_bytes())) == 10 and probe(mp4s[0].read_bytes())["pix_fmt"] == "yuv420p"


@pytest.mark.timeout(300)
def test_generate_api_uses_ema_and_runs_past_the_clip(trained):
    import torch

    from lact_app.callbacks.ema import swapped_weights
    from tasks.video import VideoTask

    task = trained["trainer"].lightning_module
    ema = torch.load(trained["last"], weights_only=False)["ema_state_dict"]
    sample = {"batch_size": 2, "num_steps": 2, "seed": 0}
    video = task.generate(12, **sample)  # 12 frames: past the 8-frame training clips
    assert video.shape == (2, 12, 3, 16, 16) and 0 <= video.min() and video.max() <= 1
    # the trainer's EMA weights, i.e. the checkpoint's, not the raw ones
    raw = task.generate(12, use_ema=False, **sample)
    with swapped_weights(task, ema):
        manual = task.generate(12, use_ema=False, **sample)
    assert torch.equal(video, manual)
    assert (video - raw).abs().max() > 1e-3, (video - raw).abs().max()
    # the checkpoint alone (no trainer, no datamodule) knows the frame size and samples with its EMA
    alone = VideoTask.load_from_checkpoint(trained["last"])
    assert tuple(alone.hparams.frame_size) == (16, 16) and set(alone.loaded_ema) == set(ema)
    torch.testing.assert_close(alone.generate(12, **sample), video, rtol=0, atol=1e-6)


@pytest.mark.timeout(400)
@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/video is absent")
def test_fit_test_predict_on_real_videos(tmp_path, video_cache, monkeypatch):
    from datamodules.prepare import main as prepare_main

    shards = tmp_path / "shards"
    assert prepare_main(["video", str(REAL), "--out", str(shards), "--max-size", "64"]) == 0
    extra = f", train_shards: {shards}, val_shards: {shards}, test_shards: {shards}"
    config = write_config(tmp_path / "real.yaml", video_cache, tmp_path / "logs", max_steps=3, data_extra=extra)
    monkeypatch.setattr(sys, "argv", ["main.py"])
    small = ["--data.init_args.batch_size=2", "--data.init_args.samples_per_epoch=6"]
    fit = cli_main(["fit", "--config", str(config), *small])
    assert fit.trainer.global_step == 3 and fit.datamodule.skipped_samples > 0  # the 3-frame clips
    last = str(Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt")
    tested = cli_main(["test", "--config", str(config), "--ckpt_path", last, *small])
    assert json.loads((Path(tested.trainer.log_dir) / "test_continuation.json").read_text())["clips"] == 3
    predicted = cli_main(["predict", "--config", str(config), "--ckpt_path", last, *small])
    assert list((Path(predicted.trainer.log_dir) / "predictions").glob("*.mp4"))


def scale_overrides() -> list[str]:
    for line in SCALE.read_text().splitlines():
        if line.startswith("# test-overrides:"):
            return shlex.split(line.split(":", 1)[1])
    raise AssertionError("configs/scale/video_1.3b.yaml lost its test-overrides line")


@pytest.mark.timeout(300)
def test_scale_config_one_step_at_reduced_width(tmp_path, video_cache, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["main.py"])
    cli = cli_main(["fit", "--config", str(SCALE), *scale_overrides(), *CPU_TRAINER, "--trainer.max_steps=1",
                    "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
                    f"--data.init_args.cache_dir={video_cache}", "--trainer.enable_progress_bar=false"])
    hp = cli.model.hparams
    assert cli.trainer.global_step == 1 and hp.fast_weight["heads"] == 2 and hp.clean_context == 4680
    assert hp.activation_checkpointing and hp.fast_weight_lr_multiplier == 10.0 and hp.sample_shift == 3.0
    groups = {g["name"]: g for g in cli.model.optimizers().optimizer.param_groups}
    assert groups["fast_decay"]["initial_lr"] == 10 * groups["decay"]["initial_lr"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fsdp2_two_processes_fit_resume_with_ema_and_test(tmp_path, video_cache):
    """The video blocks and the EMA (DTensor shards) under FSDP2 over 2 processes: resuming the
    distributed checkpoint continues step, optimizer, schedule and EMA; ``test`` from it syncs the
    continuation curve over both ranks (DDP plumbing: tests/test_cli.py's toy runs)."""
    config = write_config(tmp_path / "v.yaml", video_cache, tmp_path / "logs", max_steps=3)
    fsdp = ["--config", str(config), "--config", str(REPO_ROOT / "configs/trainer/fsdp2_cpu.yaml")]
    run_main("fit", *fsdp, "--trainer.limit_val_batches=1")
    first = version_dir(tmp_path / "logs", 0) / "checkpoints" / "last.ckpt"
    assert first.is_dir()  # a distributed checkpoint; the EMA shards travel inside it
    before = shutil.copytree(first, tmp_path / "before.ckpt")  # the resumed fit rewrites last.ckpt in place
    # the schedule of the first run (a resumed fit would otherwise stretch it to its own max_steps)
    run_main("fit", *fsdp, "--trainer.max_steps=4", "--model.init_args.max_steps_for_schedule=3",
             "--trainer.limit_val_batches=1", "--seed_everything=1", "--ckpt_path", str(first))
    assert_resumed_one_step(load_checkpoint(before), load_checkpoint(first), ema_decay=EMA(decay=0.9).current_decay(4))
    run_main("test", *fsdp, "--ckpt_path", str(first))
    curve = json.loads((version_dir(tmp_path / "logs", 1) / "test_continuation.json").read_text())
    assert curve["clips"] == 32  # 2 batches of 8 on each rank, summed over both ranks
