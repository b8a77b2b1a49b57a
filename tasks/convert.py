"""Checkpoint conversion: ``python -m tasks.convert {legacy,nvs,lm,lm-export} …``.

``nvs SRC.pth --out OUT.ckpt --official-config OFFICIAL.yaml`` converts an official LaCT NVS model
(:mod:`tasks.convert_nvs`); ``lm HF_DIR --out OUT.ckpt`` and ``lm-export CKPT --out DIR`` convert the official LaCT language
models (``config.json`` + ``model.safetensors``) to and from ``LMTask`` checkpoints
(:mod:`tasks.convert_lm`).

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
import sys
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


#: (old hyperparameter that identifies the task, its class path, hparams upgrade, parameter renames)
LEGACY_TASKS: Sequence[tuple[str, str, Callable[[Hparams], None], Renames]] = (
    ("num_lact_heads", "tasks.lm.LMTask", upgrade_lm, LM_RENAMES),
    ("muon_steps", "tasks.nvs.NVSTask", upgrade_nvs, ()),
    ("fw_heads", "tasks.video.VideoTask", upgrade_video, VIDEO_RENAMES),
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
    for marker, class_path, upgrade, renames in LEGACY_TASKS:
        if marker in hp:
            break
    else:
        raise ValueError("not a checkpoint of the old layout: its hyperparameters have none of "
                         f"{[task[0] for task in LEGACY_TASKS]}")  # fmt: skip
    upgrade(hp)
    # what LightningCLI saves beside the arguments, so `main.py test --ckpt_path` rebuilds the model
    hp.setdefault("_class_path", class_path)
    hp.setdefault("_instantiator", "lightning.pytorch.cli.instantiate_module")
    checkpoint["state_dict"] = rename_keys(checkpoint["state_dict"], renames)
    ema = legacy_ema(checkpoint)
    if ema is not None:
        checkpoint[EMA_CHECKPOINT_KEY] = rename_keys(ema, renames)
    return checkpoint


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _legacy(args: argparse.Namespace) -> str:
    checkpoint = upgrade_legacy(torch.load(args.src, map_location="cpu", weights_only=False))
    _save(checkpoint, args.out)
    return (f"wrote {args.out} ({checkpoint['hyper_parameters'].get('memory', 'lact')} memory, "
            f"fast_weight={checkpoint['hyper_parameters']['fast_weight']})")  # fmt: skip


def _lm(args: argparse.Namespace) -> str:
    from tasks.convert_lm import convert_lm

    checkpoint = convert_lm(args.src, ns_dtype=args.ns_dtype, dtype=DTYPES[args.dtype])
    _save(checkpoint, args.out)
    hp = checkpoint["hyper_parameters"]
    return f"wrote {args.out} (LMTask: backbone={hp['backbone']}, fast_weight={hp['fast_weight']})"


def _lm_export(args: argparse.Namespace) -> str:
    from tasks.convert_lm import export_lm

    export_lm(torch.load(args.src, map_location="cpu", weights_only=False), args.out)
    return f"wrote {args.out / 'config.json'} and {args.out / 'model.safetensors'}"


def _nvs(args: argparse.Namespace) -> str:
    from tasks.convert_nvs import convert_nvs

    checkpoint = convert_nvs(args.src, args.official_config, ns_dtype=args.ns_dtype, dtype=DTYPES[args.dtype])
    _save(checkpoint, args.out)
    hp = checkpoint["hyper_parameters"]
    return f"wrote {args.out} (NVSTask: backbone={hp['backbone']}, fast_weight={hp['fast_weight']})"


def _save(checkpoint: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tasks.convert", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    legacy = commands.add_parser("legacy", help="a checkpoint written before the one-model-interface change")
    legacy.add_argument("src", type=Path, help="the old Lightning checkpoint (a single .ckpt file)")
    legacy.add_argument("--out", type=Path, required=True, help="where to write the converted checkpoint")
    legacy.set_defaults(run=_legacy)
    nvs = commands.add_parser(
        "nvs", help="an official LaCT NVS model (lact_nvs) -> an NVSTask checkpoint",
        description="Reads SRC (what the official trainer saves: {'model': state_dict, ...}) and the "
                    "official model yaml (patch_size, dim, layers, block_config); writes a "
                    "self-contained NVSTask checkpoint. Unknown block types, parameters or values "
                    "and mismatched weights are refused.",
    )  # fmt: skip
    nvs.add_argument("src", type=Path, metavar="SRC.pth", help="the official checkpoint")
    nvs.add_argument("--out", type=Path, required=True, help="where to write the Lightning checkpoint")
    nvs.add_argument("--official-config", type=Path, required=True, metavar="OFFICIAL.yaml",
                     help="the official model yaml the checkpoint was trained with")  # fmt: skip
    nvs.set_defaults(run=_nvs)
    lm = commands.add_parser(
        "lm", help="an official LaCT LM (lact_llm, HF folder) -> an LMTask checkpoint",
        description="Reads HF_DIR/config.json (LaCTSWIGLUConfig fields; omitted ones take the class "
                    "defaults) and model.safetensors (or pytorch_model.bin); writes a self-contained "
                    "LMTask checkpoint. Unsupported fields or values and mismatched weights are refused.",
    )  # fmt: skip
    lm.add_argument("src", type=Path, metavar="HF_DIR", help="folder with config.json and the weights")
    lm.add_argument("--out", type=Path, required=True, help="where to write the Lightning checkpoint")
    for sub in (nvs, lm):
        sub.add_argument("--ns-dtype", choices=list(DTYPES), default="float32",
                         help="dtype of Muon's Newton-Schulz (fast_weight.ns_dtype); bfloat16 reproduces "
                              "the official outputs, float32 is this project's default")  # fmt: skip
        sub.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype to store the weights in")
    lm.set_defaults(run=_lm)
    export = commands.add_parser(
        "lm-export", help="an LMTask checkpoint -> the official LaCT LM folder layout",
        description="Writes DIR/config.json (LaCTSWIGLUConfig) and DIR/model.safetensors, which the "
                    "official lact_llm code loads; official -> project -> official is exact.",
    )  # fmt: skip
    export.add_argument("src", type=Path, metavar="CKPT", help="a Lightning checkpoint of LMTask")
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write")
    export.set_defaults(run=_lm_export)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand; a refused source is one line on stderr and exit code 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        message = args.run(args)
    except ValueError as err:
        if args.command == "legacy":
            parser.error(f"{args.src}: {err}")
        print(f"error: {args.src}: {err}", file=sys.stderr)
        return 1
    print(message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
