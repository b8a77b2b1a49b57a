"""Learning novel views of a real object: ../shared/data/nvs/gso_toy (skipped when absent).

The scene's 64 views are prepared at 64×64 with every 4th view marked target-only (16 views); the
model trains on the other 48 and is tested on the 16 it never saw, against trivial baselines
computed here: the all-white image (≈ 16.2 dB) and the mean of the 48 training views (≈ 18.7 dB).
"""

import json
from pathlib import Path

import av
import pytest
import torch

from datamodules.nvs import SceneDecoder
from datamodules.prepare import main as prepare_main
from lact_app.metrics import psnr
from tests.conftest import REPO_ROOT
from tests.tasks.test_nvs_task import fit, nvs_args, run_stage

GSO = REPO_ROOT.parent / "shared" / "data" / "nvs" / "gso_toy"
pytestmark = pytest.mark.skipif(not (GSO / "opencv_cameras.json").is_file(), reason=f"{GSO} is absent")
TARGET_ONLY = 16


@pytest.fixture(scope="module")
def gso_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gso-shards")
    assert prepare_main(["nvs", str(GSO), "--out", str(out), "--target-views", "every:4", "--resize", "64"]) == 0
    return out


@pytest.fixture(scope="module")
def gso_run(tmp_path_factory, toy_cache, gso_shards):
    root = tmp_path_factory.mktemp("gso-run")
    args = nvs_args(root, toy_cache, f"--data.init_args.train_shards={gso_shards}",
                    f"--data.init_args.test_shards={gso_shards}", "--data.init_args.num_target_views=4",
                    "--data.init_args.eval_num_input_views=4", f"--data.init_args.eval_num_target_views={TARGET_ONLY}",
                    "--data.init_args.shuffle_buffer=1", "--data.init_args.samples_per_epoch=100",
                    "--trainer.max_steps=700", "--model.init_args.lr=0.003", "--model.init_args.warmup_steps=20")
    with pytest.MonkeyPatch.context() as mp:
        ckpt = fit(args, mp)
    return args, ckpt


def gso_baselines(shards: Path) -> dict[str, float]:
    """PSNR on the target-only views of all-white and of the mean of the training views."""
    import webdataset as wds

    sample = next(iter(wds.WebDataset(str(shards / "train-000000.tar"), shardshuffle=False)))
    item = SceneDecoder("test", (64, 64), num_inputs=64 - TARGET_ONLY, num_targets=TARGET_ONLY, normalize=False, seed=0,
                        camera_path="turntable", path_frames=1)(sample)
    target, train = item["target_images"], item["input_images"]
    return {"white": psnr(torch.ones_like(target), target).mean().item(),
            "mean_train": psnr(train.mean(0, keepdim=True).expand_as(target), target).mean().item()}


@pytest.mark.timeout(900)
def test_learns_unseen_views_of_a_real_object(gso_run, gso_shards, monkeypatch):
    args, ckpt = gso_run
    tested = run_stage("test", args, ckpt, monkeypatch)
    metrics = json.loads((Path(tested.trainer.log_dir) / "test_metrics.json").read_text())
    baselines = gso_baselines(gso_shards)
    print(f"gso_toy unseen views: model {metrics['test/psnr']:.2f} dB, baselines {baselines}")
    assert 15.5 < baselines["white"] < 17.5 and 18.0 < baselines["mean_train"] < 19.5
    assert metrics["test/psnr"] > max(baselines.values()) + 0.3


@pytest.mark.timeout(300)
def test_predicts_a_turntable_of_the_object(gso_run, monkeypatch):
    args, ckpt = gso_run
    predicted = run_stage("predict", args, ckpt, monkeypatch)
    out = Path(predicted.trainer.log_dir) / "predictions"
    assert (out / "gso_toy.gif").is_file()
    with av.open(str(out / "gso_toy.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == 6
