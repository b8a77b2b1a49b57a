"""`python -m tasks.convert legacy`: checkpoints of the old layout load and compute what they did.

``tests/data/legacy`` holds tiny checkpoints written by the code before the one-model-interface
change (one per task; the video one with an EMA in its callback state) and their models' outputs
on fixed inputs, recorded with that code.
"""

import pytest
import torch

from lact_app.nn import BackboneConfig
from tasks.convert import main as convert_main
from tasks.lm import LMTask
from tasks.nvs import NVSTask
from tasks.video import VideoTask
from tests.conftest import REPO_ROOT

LEGACY = REPO_ROOT / "tests/data/legacy"


@pytest.fixture(scope="module")
def outputs():
    return torch.load(LEGACY / "legacy_outputs.pt")


def convert(name: str, tmp_path) -> torch.nn.Module:
    out = tmp_path / f"{name}.ckpt"
    assert convert_main(["legacy", str(LEGACY / f"{name}_v0.ckpt"), "--out", str(out)]) == 0
    return out


def test_lm_checkpoint_computes_the_same_logits(tmp_path, outputs):
    path = convert("lm", tmp_path)
    # what LightningCLI saves beside the arguments, so `main.py test --ckpt_path` rebuilds the model
    assert torch.load(path, weights_only=False)["hyper_parameters"]["_class_path"] == "tasks.lm.LMTask"
    task = LMTask.load_from_checkpoint(path)
    hp = task.hparams
    assert hp.memory == "lact" and "num_lact_heads" not in hp and "branch" not in hp
    assert hp.backbone == {"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": None, "rope_theta": 1e6}
    assert hp.fast_weight == {"chunk": 8, "heads": 2, "inter_multi": 1.0, "base_lr": 1e-3, "use_momentum": True,
                              "use_muon": True, "ns_coeffs": "lm", "ns_steps": 5, "ns_dtype": "float32", "w_init": "low_rank",
                              "low_rank": 4, "init_gain": 0.5, "weight_norm": True, "recompute": True}  # fmt: skip
    assert torch.equal(task.model(outputs["lm_ids"]), outputs["lm_logits"])


def test_nvs_checkpoint_renders_the_same_images(tmp_path, outputs):
    task = NVSTask.load_from_checkpoint(convert("nvs", tmp_path))
    assert task.hparams.memory == "lact" and task.hparams.fast_weight["ns_coeffs"] == "classic"
    assert task.hparams.backbone == {"dim": 32, "depth": 1, "heads": 2, "mlp_ratio": 4.0, "rope_theta": None}
    images, K, c2w = outputs["nvs_inputs"]
    assert torch.equal(task.model(images, K[:, :2], c2w[:, :2], K[:, 2:], c2w[:, 2:]), outputs["nvs_images"])


def test_video_checkpoint_generates_the_same_frames_and_keeps_its_ema(tmp_path, outputs):
    path = convert("video", tmp_path)
    task = VideoTask.load_from_checkpoint(path)
    assert task.hparams.fast_weight["heads"] == 2 and task.hparams.backbone["heads"] == 2
    frames = task.generate(6, context=outputs["video_context"], num_steps=2, seed=3, use_ema=False)
    assert torch.equal(frames, outputs["video_frames"])
    # the EMA moved out of the callback state, under the new parameter names, and generate uses it
    old = torch.load(LEGACY / "video_v0.ckpt", weights_only=False)["callbacks"]["EMA"]["ema"]
    assert set(task.loaded_ema) == {n for n, _ in task.named_parameters()}
    fast = [n for n in task.loaded_ema if ".mixer.lact." in n]
    assert fast and torch.equal(task.loaded_ema[fast[0]], old[fast[0].replace(".mixer.lact.", ".mixer.fast.")])
    ema_frames = task.generate(6, context=outputs["video_context"], num_steps=2, seed=3)
    assert not torch.allclose(ema_frames, frames)


def test_a_current_checkpoint_is_refused(tmp_path, capsys):
    task = VideoTask(backbone=BackboneConfig(dim=16, depth=1, heads=2), patch_size=4, chunk_frames=2)
    path = tmp_path / "new.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["legacy", str(path), "--out", str(tmp_path / "x.ckpt")])
    assert exit_info.value.code == 2 and not (tmp_path / "x.ckpt").exists()
    assert f"{path}: not a checkpoint of the old layout" in capsys.readouterr().err
