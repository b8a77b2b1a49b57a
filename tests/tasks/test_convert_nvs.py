"""`python -m tasks.convert nvs` on the official LaCT NVS outputs (../shared/reference/official).

Each case of ``nvs_tiny.pt`` is written to disk as the official trainer saves it (``{"model": …}``)
with its official model yaml, converted with the command's ``main``, loaded through
``NVSTask.load_from_checkpoint`` and compared with the official joint forward and
reconstruct → render.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from tasks.convert import main as convert_main
from tasks.convert_nvs import lr_channel_order
from tasks.nvs import NVSTask
from tests.conftest import REPO_ROOT
from tests.official_fixtures import by_name, load_cases

CASES, NAMES, pytestmark = load_cases("nvs_tiny.pt")


def case(name: str) -> dict:
    return by_name(CASES, name)


def write_official(c: dict, folder, config=None, state=None):
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = dict(c["checkpoint"]) if state is None else {**c["checkpoint"], "model": state}
    torch.save(checkpoint, folder / "src.pth")
    (folder / "model.yaml").write_text(yaml.safe_dump(c["official_config"] if config is None else config))
    return folder / "src.pth", folder / "model.yaml"


def run(src, config, out, *extra: str) -> int:
    return convert_main(["nvs", str(src), "--out", str(out), "--official-config", str(config), *extra])


def convert(c: dict, tmp_path, *extra: str):
    out = tmp_path / "nvs.ckpt"
    assert run(*write_official(c, tmp_path / "official"), out, *extra) == 0
    return NVSTask.load_from_checkpoint(out, map_location="cpu").eval().model


def outputs(model, c: dict):
    i, t = c["inputs"], c["targets"]
    with torch.no_grad():
        joint = model(i["image"], i["fxfycxcy"], i["c2w"], t["fxfycxcy"], t["c2w"])
        states = model.reconstruct(i["image"], i["fxfycxcy"], i["c2w"])
        render = model.render(states, t["fxfycxcy"], t["c2w"], tuple(c["image_size"]), chunk_views=1)
    return joint, render


@pytest.mark.parametrize("name", NAMES)
def test_joint_forward_and_render_match_the_official_fp32_newton_schulz(name, tmp_path):
    c = case(name)
    joint, render = outputs(convert(c, tmp_path), c)
    assert (joint - c["joint_ns_fp32"]).abs().max() <= 1e-5  # measured: 1.2e-7 on both cases
    assert (render - c["render_ns_fp32"]).abs().max() <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_bf16_newton_schulz_tracks_the_official_bf16_outputs(name, tmp_path):
    """``--ns-dtype bfloat16`` moves the images towards the official (bf16-NS) outputs.

    The bound is 3/4 of the official fp32-vs-bf16 gap, not a tenth: the bf16 iteration makes the
    images sensitive to the last fp32 bit of anything upstream — perturbing the input images by
    1e-7 (relative) moves our bf16 outputs by 4–7e-4, 40–70 % of the gap (1.6e-3 / 1.0e-3) — so
    only a bit-exact replica of the official kernels' op order could land within a tenth. Measured
    here: 6.1e-4 / 4.0e-4.
    """
    c = case(name)
    joint, render = outputs(convert(c, tmp_path, "--ns-dtype", "bfloat16"), c)
    for ours, kind in ((joint, "joint"), (render, "render")):
        gap = (c[f"{kind}_ns_fp32"] - c[f"{kind}_ns_bf16"]).abs().max()
        err = (ours - c[f"{kind}_ns_bf16"]).abs().max()
        assert err <= 0.75 * gap
        assert err < (ours - c[f"{kind}_ns_fp32"]).abs().max()


def test_hyperparameters_and_layouts(tmp_path):
    c = case("ttt4x_2heads_nonsquare")
    out = tmp_path / "nvs.ckpt"
    assert run(*write_official(c, tmp_path / "official"), out, "--dtype", "bfloat16") == 0
    ckpt = torch.load(out, weights_only=False)
    hp = ckpt["hyper_parameters"]
    assert hp["patch_size"] == 8 and hp["qk_norm_eps"] is None and hp["memory"] == "lact"
    assert hp["backbone"] == {"dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 4.0, "rope_theta": None}
    fw = hp["fast_weight"]
    assert (fw["heads"], fw["inter_multi"], fw["base_lr"], fw["ns_coeffs"], fw["ns_steps"]) == (2, 4.0, 0.01, "classic", 5)
    official = c["checkpoint"]["model"]
    state = ckpt["state_dict"]
    assert {v.dtype for v in state.values()} == {torch.bfloat16}
    w0 = official["blocks.1.module_list.1.f.w0"]
    assert torch.equal(state["model.blocks.1.mixer.layer.branch.w0"], w0.mT.bfloat16())
    lr = official["blocks.0.module_list.1.f.lr_fc.bias"]
    assert torch.equal(state["model.blocks.0.mixer.layer.lr_proj.bias"], lr[[0, 2, 4, 1, 3, 5]].bfloat16())
    assert lr_channel_order(2) == [0, 2, 4, 1, 3, 5]


def test_other_sizes_and_patch_sizes_convert(tmp_path):
    """Not tied to the fixture sizes: an official-layout model with another width, depth, head
    count, patch size and image size converts to a model that runs and matches its weights."""
    config = {"patch_size": 4, "dim": 48, "layers": 3, "block_config": [
        {"type": "model.SelfAttention", "length_dim": "l", "params": {"head_dim": 12, "use_qk_norm": True}},
        {"type": "lact_ttt.FastWeightGluMLPMultihead", "length_dim": "vl",
         "params": {"head_dim": 16, "inter_multi": 2, "base_lr": 0.02, "muon_update_steps": 3}},
        {"type": "model.MLP", "length_dim": "vl", "params": {"inter_multi": 2}}]}  # fmt: skip
    g = torch.Generator().manual_seed(0)
    shapes = {"input_linear.weight": (48, 12 * 16), "input_layernorm.weight": (48,),
              "image_token_decoder.0.weight": (48,), "image_token_decoder.1.weight": (3 * 16, 48)}  # fmt: skip
    for i in range(3):
        p = f"blocks.{i}.module_list."
        shapes.update({p + "0.ln.weight": (48,), p + "0.f.to_qkv.weight": (144, 48), p + "0.f.c_proj.weight": (48, 48),
                       p + "0.f.q_norm.weight": (12,), p + "0.f.k_norm.weight": (12,), p + "1.ln.weight": (48,),
                       p + "1.f.w0": (3, 16, 32), p + "1.f.w1": (3, 32, 16), p + "1.f.w2": (3, 16, 32),
                       p + "1.f.to_qkv.weight": (144, 48), p + "1.f.c_proj.weight": (48, 48),
                       p + "1.f.lr_fc.weight": (9, 48), p + "1.f.lr_fc.bias": (9,), p + "1.f.o_norm.weight": (16,),
                       p + "2.ln.weight": (48,), p + "2.f.c_fc.weight": (96, 48), p + "2.f.c_proj.weight": (48, 96)})  # fmt: skip
    state = {k: 0.1 * torch.randn(s, generator=g) for k, s in shapes.items()}
    fake = {"checkpoint": {"model": {}}, "official_config": config}
    src, cfg = write_official(fake, tmp_path / "official", state={f"module.{k}": v for k, v in state.items()})
    assert run(src, cfg, tmp_path / "nvs.ckpt") == 0
    model = NVSTask.load_from_checkpoint(tmp_path / "nvs.ckpt").eval().model
    assert torch.equal(model.blocks[2].mixer.layer.branch.w1, state["blocks.2.module_list.1.f.w1"].mT)
    assert torch.equal(model.blocks[1].mixer.layer.lr_proj.weight[3 * 2 + 1], state["blocks.1.module_list.1.f.lr_fc.weight"][1 * 3 + 2])
    c2w = torch.eye(4).expand(1, 3, 4, 4).clone()
    c2w[:, :, 0, 3] = torch.arange(3.0)
    K = torch.tensor([20.0, 20.0, 10.0, 6.0]).expand(1, 3, 4)
    with torch.no_grad():
        out = model(torch.rand(1, 2, 3, 12, 20, generator=g), K[:, :2], c2w[:, :2], K[:, 2:], c2w[:, 2:])
    assert out.shape == (1, 1, 3, 12, 20) and torch.isfinite(out).all()


def _config_with(change):
    config = yaml.safe_load(yaml.safe_dump(case("ttt2x_1head")["official_config"]))
    change(config)
    return config


@pytest.mark.parametrize(
    "change, message",
    [(lambda c: c["block_config"][1].update(type="lact_ttt.SomeOtherTTT"),
      "block_config[1]: block type 'lact_ttt.SomeOtherTTT' is not supported"),
     (lambda c: c["block_config"][1]["params"].update(muon_update_steps=0), "muon_update_steps=0 is not supported"),
     (lambda c: c["block_config"][2]["params"].update(dropout=0.1), "unknown parameter(s) ['dropout'] of model.MLP"),
     (lambda c: c["block_config"][0]["params"].update(head_dim=24), "head_dim=24 does not divide dim=64"),
     (lambda c: c.update(use_rope=True), "unknown field(s) ['use_rope']"),
     (lambda c: c["block_config"].pop(2), "is not supported (only the block")],
)  # fmt: skip
def test_unsupported_config_is_refused_in_one_line(change, message, tmp_path, capsys):
    c = case("ttt2x_1head")
    src, cfg = write_official(c, tmp_path / "official", config=_config_with(change))
    assert run(src, cfg, tmp_path / "x.ckpt") == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.ckpt").exists()


def test_mismatched_weights_are_refused_with_their_keys(tmp_path, capsys):
    c = case("ttt2x_1head")
    state = dict(c["checkpoint"]["model"])
    state.pop("blocks.1.module_list.1.f.lr_fc.bias")
    state["blocks.0.extra"] = torch.zeros(1)
    state["input_layernorm.weight"] = torch.zeros(3)
    src, cfg = write_official(c, tmp_path / "official", state=state)
    assert run(src, cfg, tmp_path / "x.ckpt") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing ['blocks.1.module_list.1.f.lr_fc.bias']" in err and "unexpected ['blocks.0.extra']" in err
    assert "wrong shapes ['input_layernorm.weight: (3,) (expected (64,))']" in err


def test_converted_checkpoint_loads_weights_only_as_a_cli_checkpoint(tmp_path):
    """The hyperparameters carry the class path and instantiator LightningCLI writes, so
    ``main.py test --ckpt_path`` rebuilds the model from them (it reads them weights-only)."""
    c = case("ttt2x_1head")
    assert run(*write_official(c, tmp_path / "official"), tmp_path / "nvs.ckpt") == 0
    hp = torch.load(tmp_path / "nvs.ckpt", weights_only=True)["hyper_parameters"]
    assert hp["_class_path"] == "tasks.nvs.NVSTask"
    assert hp["_instantiator"] == "lightning.pytorch.cli.instantiate_module"


@pytest.mark.slow
def test_main_test_runs_on_a_converted_checkpoint(tmp_path, monkeypatch):
    import sys

    from lact_app.cli import cli_main

    c = case("ttt4x_2heads_nonsquare")
    assert run(*write_official(c, tmp_path / "official"), tmp_path / "nvs.ckpt", "--ns-dtype", "bfloat16") == 0
    monkeypatch.setattr(sys, "argv", ["main.py"])
    cli = cli_main(["test", "--config", str(REPO_ROOT / "configs/nvs.yaml"), "--config",
                    str(REPO_ROOT / "configs/official/nvs_scene_ttt4x_res72x128.yaml"),
                    "--ckpt_path", str(tmp_path / "nvs.ckpt"), "--data.init_args.image_size=[24,40]",
                    "--data.init_args.num_input_views=2", "--data.init_args.num_target_views=1",
                    "--data.init_args.default_scenes=16", f"--data.init_args.cache_dir={tmp_path / 'cache'}",
                    "--data.init_args.num_workers=0", "--trainer.limit_test_batches=1",
                    f"--trainer.default_root_dir={tmp_path / 'run'}"])  # fmt: skip
    assert cli.model.hparams.fast_weight["ns_dtype"] == "bfloat16" and cli.model.hparams.qk_norm_eps is None
    official = c["checkpoint"]["model"]["blocks.1.module_list.1.f.w2"]
    assert torch.equal(cli.model.model.blocks[1].mixer.layer.branch.w2.detach(), official.mT)
