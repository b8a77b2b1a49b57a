"""Reading Lightning checkpoints in tests, and checking that a resumed run continued its checkpoint.

``load_checkpoint`` reads a single-file checkpoint or a distributed (DCP) folder as one dict of full
tensors. ``assert_resumed_one_step(before, after)`` checks that ``after`` is exactly one optimizer step
on from ``before``, taken with everything ``before`` held: the global step and the LR scheduler
continue, AdamW's step counts and moments continue (``exp_avg_sq`` agrees with the gradient implied
by the two ``exp_avg``), the weights moved by that AdamW step at the learning rate ``before``'s
scheduler set, and the EMA moved from ``before``'s EMA. A run that silently restarted (fresh
optimizer, scheduler or EMA) fails each of these.

Resume with another ``--seed_everything`` than the first run: a deterministic run that ignored the
checkpoint and retrained from step 0 would otherwise reach the very same state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

EMA_PREFIX = "_ema."


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` (a file, or a DCP folder converted in memory) with keys
    ``global_step``, ``state_dict``, ``optimizer`` (AdamW's state dict, parameters named when the
    checkpoint names them), ``lr_schedulers`` and ``ema`` (name → tensor, or {} without EMA)."""
    path = Path(path)
    if path.is_dir():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory() as tmp:
            dcp_to_torch_save(path, Path(tmp) / "full.pt")
            full = torch.load(Path(tmp) / "full.pt", weights_only=False)
        checkpoint = {**torch.load(path / "meta.pt", weights_only=False), **full}
        checkpoint["optimizer_states"] = [checkpoint.pop("optimizer_0")]
    else:
        checkpoint = torch.load(path, weights_only=False)
    state = dict(checkpoint["state_dict"])
    ema = {k[len(EMA_PREFIX):]: state.pop(k) for k in [k for k in state if k.startswith(EMA_PREFIX)]}
    ema.update(checkpoint.get("ema_state_dict") or {})
    return {"global_step": checkpoint["global_step"], "state_dict": state,
            "optimizer": checkpoint["optimizer_states"][0], "lr_schedulers": checkpoint["lr_schedulers"], "ema": ema}


def _groups_by_param(optimizer: dict) -> dict:
    return {p: group for group in optimizer["param_groups"] for p in group["params"]}


def _error(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> tuple[float, float]:
    """(max |actual − expected|, the tolerance rtol · max |expected|)."""
    return (actual - expected).abs().max().item(), rtol * (expected.abs().max().item() + 1e-12)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = 1e-4) -> None:
    error, tolerance = _error(actual, expected, rtol)
    assert error <= tolerance, f"{what}: max error {error:.3g}, tolerance {tolerance:.3g}"


def assert_resumed_one_step(before: dict, after: dict, ema_decay: float | None = None) -> None:
    """``after`` (a checkpoint of the resumed run) is one AdamW step on from ``before`` (the checkpoint
    it resumed from); ``ema_decay``: the EMA decay of that step, to check the EMA (None: no EMA)."""
    step = before["global_step"]
    assert after["global_step"] == step + 1, (before["global_step"], after["global_step"])

    (sched_a,), (sched_b,) = before["lr_schedulers"], after["lr_schedulers"]
    assert sched_b["last_epoch"] == sched_a["last_epoch"] + 1 == step + 1, (sched_a["last_epoch"], sched_b["last_epoch"])
    assert sched_b["lr_lambdas"] == sched_a["lr_lambdas"] and sched_b["base_lrs"] == sched_a["base_lrs"]

    opt_a, opt_b = before["optimizer"], after["optimizer"]
    assert set(opt_b["state"]) == set(opt_a["state"]) and opt_a["state"], "optimizer state lost or empty"
    groups_a = _groups_by_param(opt_a)
    named = all(isinstance(k, str) for k in opt_a["state"])
    checked_update = 0
    for key, sa in opt_a["state"].items():
        sb, group = opt_b["state"][key], groups_a[key]
        assert int(sb["step"]) == int(sa["step"]) + 1, (key, sa["step"], sb["step"])
        beta1, beta2 = group["betas"]
        grad = (sb["exp_avg"] - beta1 * sa["exp_avg"]) / (1 - beta1)
        _close(sb["exp_avg_sq"], beta2 * sa["exp_avg_sq"] + (1 - beta2) * grad**2, f"exp_avg_sq of {key}", rtol=1e-3)
        if not named:
            continue
        # the AdamW step itself, at the lr ``before``'s scheduler left in the optimizer
        t, lr = int(sb["step"]), group["lr"]
        w = before["state_dict"][key] * (1 - lr * group["weight_decay"])
        denom = (sb["exp_avg_sq"] / (1 - beta2**t)).sqrt() + group["eps"]
        expected = w - lr * (sb["exp_avg"] / (1 - beta1**t)) / denom
        moved = (after["state_dict"][key] - before["state_dict"][key]).abs().max().item()
        error = (after["state_dict"][key] - expected).abs().max().item()
        tolerance = 1e-3 * moved + 1e-6 * (1 + before["state_dict"][key].abs().max().item())
        assert error <= tolerance, f"weight step of {key}: error {error:.3g}, moved {moved:.3g}"
        checked_update += moved > 10 * tolerance
    assert not named or checked_update, "no weight moved in the resumed step (lr 0?): the check would be vacuous"

    if ema_decay is not None:
        assert before["ema"] and set(after["ema"]) == set(before["ema"]), "EMA weights missing from a checkpoint"
        discriminating = 0
        for name, ea in before["ema"].items():
            expected = torch.lerp(ea, after["state_dict"][name], 1 - ema_decay)
            _close(after["ema"][name], expected, f"EMA of {name}")
            # an EMA restarted from the loaded weights would hold exactly the weights
            error, tolerance = _error(after["state_dict"][name], expected, 1e-4)
            discriminating += error > 10 * tolerance
        assert discriminating, "the EMA is within tolerance of the weights: a restarted EMA would pass too"
