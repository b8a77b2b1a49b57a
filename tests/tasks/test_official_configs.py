"""``configs/official/``: each YAML describes the architecture the converter derives from the
released official config it names, so ``main.py test --ckpt_path converted.ckpt`` and a fit from
scratch build the same model."""

from __future__ import annotations

import json

import pytest
import yaml

from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.convert_common import ConversionError
from tasks.convert_lm import lm_hparams
from tasks.convert_nvs import nvs_hparams
from tests.conftest import REPO_ROOT

OFFICIAL = REPO_ROOT.parent / "shared/reference/official/configs"
pytestmark = pytest.mark.skipif(not OFFICIAL.exists(), reason="official configs not available")
NVS = {"obj_res256": "ttt2x", "obj_res512": "ttt2x", "obj_res1024": "ttt2x", "scene_ttt2x_res128": "ttt2x",
       "scene_ttt2x_res256": "ttt2x", "scene_ttt2x_res512": "ttt2x", "scene_ttt4x_res72x128": "ttt4x",
       "scene_ttt4x_res144x256": "ttt4x", "scene_ttt4x_res288x512": "ttt4x", "scene_ttt4x_res536x960": "ttt4x"}  # fmt: skip


def model_args(path):
    return yaml.safe_load(path.read_text())["model"]["init_args"]


@pytest.mark.parametrize("name, kind", NVS.items())
def test_nvs_configs_match_the_converted_official_architecture(name, kind):
    ours = model_args(REPO_ROOT / f"configs/official/nvs_{name}.yaml")
    official = nvs_hparams(yaml.safe_load((OFFICIAL / f"lact_l24_d768_{kind}.yaml").read_text()), "bfloat16")
    assert ours["patch_size"] == official["patch_size"] and ours["qk_norm_eps"] is official["qk_norm_eps"]
    assert BackboneConfig(**ours["backbone"]).to_dict() == official["backbone"]
    assert FastWeightConfig(**ours["fast_weight"]).to_dict() == official["fast_weight"]


@pytest.mark.parametrize("variant", ["momentum", "momentum_muon"])
def test_lm_configs_match_the_converted_official_architecture(variant):
    ours = model_args(REPO_ROOT / f"configs/official/lm_760m_{variant}.yaml")
    official = lm_hparams(json.loads((OFFICIAL / f"760M_lact_swiglu_nh4_fwlow_rank_{variant}.json").read_text()),
                          "bfloat16")  # fmt: skip
    assert BackboneConfig(**ours.pop("backbone")).to_dict() == official.pop("backbone")
    assert FastWeightConfig(**ours.pop("fast_weight")).to_dict() == official.pop("fast_weight")
    assert {k: ours[k] for k in official} == official


@pytest.mark.parametrize("path", sorted(OFFICIAL.glob("*.json")) + sorted(OFFICIAL.glob("*.yaml")), ids=lambda p: p.name)
def test_every_released_official_config_is_accepted(path):
    """No released config trips a refusal (the fused-kernel one sets no_v_silu, fp32_states, use_fused_kernel)
    — except the 3B momentum one, whose ``num_attn_heads: 25`` does not divide ``hidden_size: 3072``
    (the official code cannot build it either: its head split needs 3072 = 25 · 122)."""
    if path.name == "3B_lact_swiglu_nh4_fwlow_rank_momentum.json":
        with pytest.raises(ConversionError, match="backbone.heads must be a divisor of dim=3072, got 25"):
            lm_hparams(json.loads(path.read_text()))
    elif path.suffix == ".json":
        hp = lm_hparams(json.loads(path.read_text()))
        assert hp["fast_v_silu"] is ("fused_kernel" not in path.name)
    else:
        hp = nvs_hparams(yaml.safe_load(path.read_text()))
        assert hp["fast_weight"]["heads"] == 1 and hp["backbone"]["heads"] == 12
