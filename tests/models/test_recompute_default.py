"""Training uses the fast-weight op's memory-saving backward by default, with or without a Trainer."""

from dataclasses import replace

import pytest
import torch

from lact_app.models.lm import LM_FAST_WEIGHT, LaCTLM
from lact_app.models.nvs import NVS_FAST_WEIGHT
from lact_app.models.video import VIDEO_FAST_WEIGHT
from lact_app.nn import BackboneConfig

B, L, CHUNK, FW_HEADS, DIM = 2, 40, 8, 2, 32
D = DIM // FW_HEADS
H = 24  # inter_multi 1.5: distinct from every other width of the model


def fast_weight_activations(recompute=None) -> list[tuple[int, ...]]:
    """Shapes of the per-token SwiGLU activations ([B·n_h, n, H] or [B·n_h, n, 2H]) that one training
    forward of a small LM built from the LM preset keeps for the backward."""
    changes = {} if recompute is None else {"recompute": recompute}
    fast_weight = replace(LM_FAST_WEIGHT, chunk=CHUNK, heads=FW_HEADS, inter_multi=H / D, low_rank=4, **changes)
    backbone = BackboneConfig(dim=DIM, depth=1, heads=4, mlp_ratio=None, rope_theta=1e6)
    torch.manual_seed(0)
    model = LaCTLM(50, backbone=backbone, window=16, memory="lact", fast_weight=fast_weight).train()
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        loss = model(torch.randint(0, 50, (B, L))).sum()
    loss.backward()  # the replay in the backward keeps one segment's activations at a time, not counted here
    return [s for s in shapes if len(s) == 3 and s[0] == B * FW_HEADS and s[1] != D and s[2] in (H, 2 * H)]


def test_default_training_keeps_no_per_token_fast_weight_activations():
    assert fast_weight_activations() == []
    assert len(fast_weight_activations(recompute=False)) >= L // CHUNK, "the probe must see plain autograd's"


@pytest.mark.parametrize("preset", [LM_FAST_WEIGHT, NVS_FAST_WEIGHT, VIDEO_FAST_WEIGHT], ids=["lm", "nvs", "video"])
def test_every_task_preset_recomputes(preset):
    assert preset.recompute
