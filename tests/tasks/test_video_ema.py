"""The shard-local EMA callback (single process; the FSDP2 path runs in test_video_cli's 2-process test)."""

from types import SimpleNamespace

import torch
from torch import nn

from lact_app.callbacks.ema import EMA


def test_update_swap_and_state_roundtrip():
    module = nn.Linear(3, 2)
    ema = EMA(decay=0.5, warmup=False)
    start = {n: p.detach().clone() for n, p in module.named_parameters()}
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    ema.update(module, step=1)  # initialised from the moved weights, then one step: no change
    with torch.no_grad():
        for p in module.parameters():
            p.add_(2.0)
    ema.update(module, step=2)  # ema = 0.5 (start + 1) + 0.5 (start + 3) = start + 2
    for name, e in ema.ema.items():
        assert torch.allclose(e, start[name] + 2)
    with ema.weights(module):
        assert torch.allclose(module.weight, start["weight"] + 2) and ema.swapped
    assert torch.allclose(module.weight, start["weight"] + 3) and not ema.swapped

    # a single-file checkpoint keeps the EMA beside the weights, where a task loaded alone finds it
    checkpoint = {"state_dict": {}}
    ema.on_save_checkpoint(None, module, checkpoint)
    assert set(checkpoint["ema_state_dict"]) == {"weight", "bias"}
    restored = EMA(decay=0.5)
    restored.on_load_checkpoint(SimpleNamespace(ckpt_path="last.ckpt"), module, checkpoint)
    restored.load_state_dict(ema.state_dict())
    restored.ensure_initialized(module)
    assert torch.allclose(restored.ema["weight"], start["weight"] + 2)
    assert torch.allclose(module.weight, start["weight"] + 3)  # the live weights are untouched


def test_warmup_decay():
    ema = EMA(decay=0.995)
    assert ema.current_decay(0) == 0.1 and ema.current_decay(10_000) == 0.995
    assert EMA(decay=0.9, warmup=False).current_decay(0) == 0.9
