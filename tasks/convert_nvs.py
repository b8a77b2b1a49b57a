"""The official LaCT NVS models (``lact_nvs``: ``LaCTLVSM``) → ``NVSTask`` checkpoints.

``python -m tasks.convert nvs SRC.pth --out OUT.ckpt --official-config OFFICIAL.yaml`` reads what the
official trainer saves (``{"model": state_dict, ...}``) and the official model yaml (``patch_size``,
``dim``, ``layers``, ``block_config`` at its top level) and writes a self-contained Lightning
checkpoint of :class:`tasks.nvs.NVSTask`.

Layout differences the conversion undoes (the maths is the same):

- the fast weights ``w0, w2: [n_h, D, H]`` and ``w1: [n_h, H, D]`` are stored transposed relative
  to the project's rows (``[n_h, H, D]`` / ``[n_h, D, H]``);
- the per-token lr projection ``lr_fc`` orders its 3·n_h channels ``j·n_h + h`` (j = w0, w1, w2),
  the project's ``LRProjection`` ``h·3 + j``;
- the attention's q/k RMSNorms use ``eps=None`` (the dtype's machine epsilon): ``qk_norm_eps`` null.

Every field of the yaml is mapped or refused (an unknown block type, parameter or value), and a
state dict with missing / unexpected / mis-shaped keys is refused with the list of keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.convert_common import ConversionError, StateDict, check_keys, cli_hparams

#: The official block: per-view attention, the LaCT layer over all views, the MLP — in this order.
BLOCK_TYPES = ("model.SelfAttention", "lact_ttt.FastWeightGluMLPMultihead", "model.MLP")
#: The token range each sub-layer of the official block runs over (``length_dim``; default "vl").
LENGTH_DIMS = ("l", "vl", "vl")
#: Each sub-layer's parameters and their official defaults (None: required).
BLOCK_PARAMS: tuple[dict[str, Any], ...] = (
    {"head_dim": None, "use_qk_norm": True, "causal": False},
    {"head_dim": None, "inter_multi": 1, "base_lr": 0.01, "muon_update_steps": 0},
    {"inter_multi": 4},
)
TOP_LEVEL = ("patch_size", "dim", "layers", "block_config")

#: (official parameter name, project parameter name, transpose the last two dims); ``{i}`` = block.
NVS_NAMES = (
    ("input_linear.weight", "tokenizer.0.weight", False),
    ("input_layernorm.weight", "tokenizer.1.weight", False),
    ("image_token_decoder.0.weight", "decoder.0.weight", False),
    ("image_token_decoder.1.weight", "decoder.1.weight", False),
    ("blocks.{i}.module_list.0.ln.weight", "blocks.{i}.attn_norm.weight", False),
    ("blocks.{i}.module_list.0.f.to_qkv.weight", "blocks.{i}.attn.qkv.weight", False),
    ("blocks.{i}.module_list.0.f.c_proj.weight", "blocks.{i}.attn.out_proj.weight", False),
    ("blocks.{i}.module_list.0.f.q_norm.weight", "blocks.{i}.attn.q_norm.weight", False),
    ("blocks.{i}.module_list.0.f.k_norm.weight", "blocks.{i}.attn.k_norm.weight", False),
    ("blocks.{i}.module_list.1.ln.weight", "blocks.{i}.mixer_norm.weight", False),
    ("blocks.{i}.module_list.1.f.to_qkv.weight", "blocks.{i}.mixer.layer.qkv.weight", False),
    ("blocks.{i}.module_list.1.f.c_proj.weight", "blocks.{i}.mixer.layer.out_proj.weight", False),
    ("blocks.{i}.module_list.1.f.o_norm.weight", "blocks.{i}.mixer.layer.output_norm.weight", False),
    ("blocks.{i}.module_list.1.f.lr_fc.weight", "blocks.{i}.mixer.layer.lr_proj.weight", False),
    ("blocks.{i}.module_list.1.f.lr_fc.bias", "blocks.{i}.mixer.layer.lr_proj.bias", False),
    ("blocks.{i}.module_list.1.f.w0", "blocks.{i}.mixer.layer.branch.w0", True),
    ("blocks.{i}.module_list.1.f.w1", "blocks.{i}.mixer.layer.branch.w1", True),
    ("blocks.{i}.module_list.1.f.w2", "blocks.{i}.mixer.layer.branch.w2", True),
    ("blocks.{i}.module_list.2.ln.weight", "blocks.{i}.mlp_norm.weight", False),
    ("blocks.{i}.module_list.2.f.c_fc.weight", "blocks.{i}.mlp.fc1.weight", False),
    ("blocks.{i}.module_list.2.f.c_proj.weight", "blocks.{i}.mlp.fc2.weight", False),
)  # fmt: skip

#: Prefixes a saved state dict may carry (DDP's ``module.``, ``torch.compile``'s ``_orig_mod.``).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")


_TO_PROJECT = [(_pattern(a), b, t) for a, b, t in NVS_NAMES]
_TO_OFFICIAL = [(_pattern(b), a) for a, b, _ in NVS_NAMES]


def _official_name(name: str) -> str:
    for pattern, target in _TO_OFFICIAL:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict())
    return name


def _block_params(index: int, entry: Any) -> dict[str, Any]:
    """One ``block_config`` entry checked against the official block → its parameters with defaults."""
    where = f"block_config[{index}]"
    if not isinstance(entry, dict) or entry.get("type") != BLOCK_TYPES[index]:
        found = entry.get("type") if isinstance(entry, dict) else entry
        raise ConversionError(f"{where}: block type {found!r} is not supported here (expected {BLOCK_TYPES[index]})")
    extra = sorted(set(entry) - {"type", "length_dim", "params"})
    if extra:
        raise ConversionError(f"{where}: unknown field(s) {extra}")
    if entry.get("length_dim", "vl") != LENGTH_DIMS[index]:
        raise ConversionError(f"{where}: length_dim={entry.get('length_dim', 'vl')!r} is not supported "
                              f"(only {LENGTH_DIMS[index]!r} for {BLOCK_TYPES[index]})")  # fmt: skip
    params = dict(entry.get("params") or {})
    unknown = sorted(set(params) - set(BLOCK_PARAMS[index]))
    if unknown:
        raise ConversionError(f"{where}: unknown parameter(s) {unknown} of {BLOCK_TYPES[index]}")
    out = {**BLOCK_PARAMS[index], **params}
    missing = [k for k, v in out.items() if v is None]
    if missing:
        raise ConversionError(f"{where}: missing parameter(s) {missing} of {BLOCK_TYPES[index]}")
    return out


def _heads(dim: int, head_dim: int, where: str) -> int:
    if head_dim < 1 or dim % head_dim:
        raise ConversionError(f"{where}: head_dim={head_dim} does not divide dim={dim}")
    return dim // head_dim


def nvs_hparams(config: dict[str, Any], ns_dtype: str = "float32") -> dict[str, Any]:
    """``NVSTask`` arguments (configs as plain dicts) for an official NVS model yaml."""
    unknown = sorted(set(config) - set(TOP_LEVEL))
    missing = [k for k in TOP_LEVEL if k not in config]
    if unknown or missing:
        raise ConversionError(f"official config: unknown field(s) {unknown}" if unknown else
                              f"official config: missing field(s) {missing}")  # fmt: skip
    blocks = config["block_config"]
    if not isinstance(blocks, list) or len(blocks) != len(BLOCK_TYPES):
        types = [b.get("type") if isinstance(b, dict) else b for b in blocks] if isinstance(blocks, list) else blocks
        raise ConversionError(f"block_config: {types} is not supported (only the block {list(BLOCK_TYPES)})")
    attn, lact, mlp = (_block_params(i, b) for i, b in enumerate(blocks))
    dim = config["dim"]
    if not attn["use_qk_norm"] or attn["causal"]:
        raise ConversionError("block_config[0]: only use_qk_norm=True, causal=False attention is supported")
    if lact["muon_update_steps"] < 1:
        raise ConversionError(f"block_config[1]: muon_update_steps={lact['muon_update_steps']} is not supported "
                              "(0 still Frobenius-normalises each update in bf16 officially; only >= 1)")  # fmt: skip
    hidden = int(dim * mlp["inter_multi"])
    if round(hidden / dim * dim) != hidden:
        raise ConversionError(f"block_config[2]: MLP width {hidden} is not representable as mlp_ratio · {dim}")
    try:
        backbone = BackboneConfig(dim=dim, depth=config["layers"], heads=_heads(dim, attn["head_dim"], "block_config[0]"),
                                  mlp_ratio=hidden / dim, rope_theta=None)  # fmt: skip
        fast_weight = FastWeightConfig(
            chunk=None, heads=_heads(dim, lact["head_dim"], "block_config[1]"), inter_multi=float(lact["inter_multi"]),
            base_lr=float(lact["base_lr"]), use_momentum=False, use_muon=True, ns_coeffs="classic",
            ns_steps=int(lact["muon_update_steps"]), ns_dtype=ns_dtype, w_init="nvs", weight_norm=True,
        )  # fmt: skip
    except ValueError as err:
        raise ConversionError(f"official config: {err}") from None
    return {"patch_size": config["patch_size"], "backbone": backbone.to_dict(), "memory": "lact",
            "fast_weight": fast_weight.to_dict(), "qk_norm_eps": None}  # fmt: skip


def lr_channel_order(heads: int) -> list[int]:
    """Official ``lr_fc`` channel of each project channel: project ``h·3 + j`` ← official ``j·heads + h``."""
    return [j * heads + h for h in range(heads) for j in range(3)]


def _strip(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def to_project_state(official: StateDict, model: torch.nn.Module, heads: int) -> StateDict:
    """Official ``LaCTLVSM`` parameters → the project's ``NVSModel`` names and layouts (exact values)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state, unknown = {}, []
    order = torch.tensor(lr_channel_order(heads))
    for raw, tensor in official.items():
        name = _strip(raw)
        for pattern, target, transpose in _TO_PROJECT:
            m = pattern.match(name)
            if m:
                key = target.format(**m.groupdict())
                value = tensor.mT if transpose and tensor.dim() >= 2 else tensor
                if ".lr_proj." in key and value.size(0) == order.numel():
                    value = value[order]
                state[key] = value.contiguous()
                break
        else:
            unknown.append(raw)
    check_keys(state, expected, unknown, "the official state dict", _official_name)
    return state


def read_official_checkpoint(path: Path) -> StateDict:
    """The state dict in what the official trainer saves (``{"model": ...}``) or a bare state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    raise ConversionError(f"{path}: not an official LaCT NVS checkpoint (no 'model' state dict)")


def convert_nvs(src: Path, official_config: Path, ns_dtype: str = "float32",
                dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """An official NVS checkpoint + its model yaml → a Lightning checkpoint dict of ``NVSTask``."""
    from tasks.nvs import NVSTask

    config = yaml.safe_load(Path(official_config).read_text())
    if not isinstance(config, dict):
        raise ConversionError(f"{official_config}: not an official LaCT NVS model yaml")
    hp = nvs_hparams(config, ns_dtype)
    with torch.device("meta"):
        task = NVSTask(**hp)
    state = to_project_state(read_official_checkpoint(src), task.model, hp["fast_weight"]["heads"])
    return {
        "hyper_parameters": cli_hparams(task),
        "state_dict": {f"model.{k}": v.to(dtype) for k, v in state.items()},
        "pytorch-lightning_version": _lightning_version(),
    }


def _lightning_version() -> Optional[str]:
    import lightning

    return lightning.__version__
