"""Checkpoint conversion: ``python -m tasks.convert legacy OLD.ckpt --out NEW.ckpt``.

``legacy`` rewrites a checkpoint written before the one-model-interface change (LM arguments
``branch``, ``num_lact_heads``, ``chunk``, ``num_layers`` …; NVS ``mixer``, ``muon_steps``,
``attn_head_dim`` …; video ``fw_heads``, ``num_heads`` …; the LM / video LaCT branches under their
old parameter names; the EMA inside the EMA callback's state) into the current layout: the trunk
as one ``backbone`` dict, the fast-weight knobs as one ``fast_weight`` dict, ``memory`` in the one
vocabulary, parameters under their new names (:mod:`lact_app.models.legacy`) and the EMA
beside the weights (``ema_state_dict``). The converted model computes exactly what the old one did.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lact_app.callbacks.ema import EMA_CHECKPOINT_KEY
from lact_app.models.legacy import LM_RENAMES, VIDEO_RENAMES, Renames, rename_keys

Hparams = dict[str, Any]


def move(hp: Hparams, renames: dict[str, str]) -> dict[str, Any]:
    """Pops the old keys of ``renames`` (old → new name) present in ``hp``.  -> {new: value}."""
    return {new: hp.pop(old) for old, new in renames.items() if old in hp}


def upgrade_lm(hp: Hparams) -> None:
    """LMTask: ``branch`` → ``memory``; the trunk → ``backbone``; the LaCT knobs → ``fast_weight``."""
    hp.update(move(hp, {"branch": "memory"}))
    backbone = move(hp, {"dim": "dim", "num_layers": "depth", "num_attn_heads": "heads", "rope_theta": "rope_theta"})
    hidden = hp.pop("mlp_hidden", None)
    hp["backbone"] = {**backbone, "mlp_ratio": None if hidden is None else hidden / backbone["dim"]}
    hp["fast_weight"] = move(hp, {
        "chunk": "chunk", "num_lact_heads": "heads", "inter_multi": "inter_multi", "base_lr": "base_lr",
        "use_momentum": "use_momentum", "use_muon": "use_muon", "w_init": "w_init", "low_rank": "low_rank",
        "init_gain": "init_gain",
    })  # fmt: skip


def upgrade_nvs(hp: Hparams) -> None:
    """NVSTask: the trunk → ``backbone``; ``mixer`` (``attention``) → ``memory`` (``full_attention``);
    ``muon_steps`` → the Muon knobs of ``fast_weight``."""
    backbone = move(hp, {"dim": "dim", "depth": "depth", "mlp_ratio": "mlp_ratio"})
    hp["backbone"] = {**backbone, "heads": backbone["dim"] // hp.pop("attn_head_dim"), "rope_theta": None}
    mixer = hp.pop("mixer", "lact")
    hp["memory"] = "full_attention" if mixer == "attention" else mixer
    steps = hp.pop("muon_steps", 5)
    fast_weight = {"heads": 1, "use_muon": steps > 0, "ns_coeffs": "classic", "ns_steps": max(steps, 1), "w_init": "nvs"}
    hp["fast_weight"] = {**fast_weight, **move(hp, {"inter_multi": "inter_multi", "base_lr": "base_lr"})}


def upgrade_video(hp: Hparams) -> None:
    """VideoTask: the trunk → ``backbone``; ``fw_heads`` / ``fw_inter_multi`` / ``fw_base_lr`` → ``fast_weight``."""
    hp["backbone"] = move(hp, {"dim": "dim", "depth": "depth", "num_heads": "heads", "mlp_ratio": "mlp_ratio",
                               "rope_theta": "rope_theta"})  # fmt: skip
    hp["fast_weight"] = move(hp, {"fw_heads": "heads", "fw_inter_multi": "inter_multi", "fw_base_lr": "base_lr"})


#: (old hyperparameter that identifies the task, hparams upgrade, parameter renames)
LEGACY_TASKS: Sequence[tuple[str, Callable[[Hparams], None], Renames]] = (
    ("num_lact_heads", upgrade_lm, LM_RENAMES),
    ("muon_steps", upgrade_nvs, ()),
    ("fw_heads", upgrade_video, VIDEO_RENAMES),
)


def legacy_ema(checkpoint: dict[str, Any]) -> Optional[dict[str, torch.Tensor]]:
    """The EMA weights an old EMA callback kept in its own state, if any."""
    for state in checkpoint.get("callbacks", {}).values():
        if isinstance(state, dict) and "ema" in state:
            return state.pop("ema")
    return None


def upgrade_legacy(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A pre-change checkpoint in the current layout (in place; also returned)."""
    hp = checkpoint["hyper_parameters"]
    for marker, upgrade, renames in LEGACY_TASKS:
        if marker in hp:
            break
    else:
        raise ValueError("not a checkpoint of the old layout: its hyperparameters have none of "
                         f"{[m for m, _, _ in LEGACY_TASKS]}")  # fmt: skip
    upgrade(hp)
    checkpoint["state_dict"] = rename_keys(checkpoint["state_dict"], renames)
    ema = legacy_ema(checkpoint)
    if ema is not None:
        checkpoint[EMA_CHECKPOINT_KEY] = rename_keys(ema, renames)
    return checkpoint


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    legacy = commands.add_parser("legacy", help="a checkpoint written before the one-model-interface change")
    legacy.add_argument("src", type=Path, help="the old Lightning checkpoint (a single .ckpt file)")
    legacy.add_argument("--out", type=Path, required=True, help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    try:
        checkpoint = upgrade_legacy(torch.load(args.src, map_location="cpu", weights_only=False))
    except ValueError as err:
        parser.error(f"{args.src}: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    print(f"wrote {args.out} ({checkpoint['hyper_parameters'].get('memory', 'lact')} memory, "
          f"fast_weight={checkpoint['hyper_parameters']['fast_weight']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
