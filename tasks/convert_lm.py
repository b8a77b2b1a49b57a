"""The official LaCT language models (``lact_llm``, Hugging Face folder layout) ⇄ ``LMTask`` checkpoints.

``python -m tasks.convert lm HF_DIR --out OUT.ckpt`` reads ``HF_DIR/config.json`` (the fields of
the official ``LaCTSWIGLUConfig``; a field it omits takes that class's default,
:data:`OFFICIAL_DEFAULTS`) and ``model.safetensors`` (or a sharded ``model.safetensors.index.json``,
or ``pytorch_model.bin``), and writes a Lightning checkpoint of :class:`tasks.lm.LMTask`.
``lm-export CKPT --out DIR`` writes the reverse (``config.json`` + ``model.safetensors``).
Neither imports ``transformers``, ``fla`` or ``flash_attn``.

Every config field is either mapped onto the project's model, accepted because it does not change
the results (kernel choices, tokenizer ids, HF metadata), or — for a value the project does not
implement — refused with a :class:`ConversionError` naming it. The parameter layouts of the two
models agree (the LM's per-token lr channels are head-major ``h·3 + j`` in both), so the weights
map by name only; missing, unexpected or mis-shaped keys are refused with their list.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Optional

import torch

from lact_app.models.lm import default_mlp_hidden
from lact_app.nn import BackboneConfig, FastWeightConfig
from tasks.convert_common import ConversionError, StateDict, check_keys, cli_hparams

Config = dict[str, Any]


#: ``LaCTSWIGLUConfig`` defaults (lact_llm/lact_model/configuration_lact_swiglu.py).
OFFICIAL_DEFAULTS: Config = {
    "hidden_size": 2048, "num_hidden_layers": 24, "num_attn_heads": 32, "num_lact_heads": 4, "inter_multi": 1,
    "qkv_bias": False, "attn_qk_norm": False, "lact_chunk_size": 2048, "use_muon": False, "lr_dim": 1,
    "qkv_silu": True, "no_v_silu": False, "lr_parameterization": "mamba", "learnable_ttt_scale": True,
    "use_momentum": True, "ttt_loss_type": "dot_product", "ttt_prenorm": False, "ttt_nope": False,
    "w0_w2_low_rank": -1, "window_size": 2048, "rope_theta": 10000.0, "max_position_embeddings": 2048,
    "hidden_ratio": 4, "intermediate_size": None, "hidden_act": "swish", "initializer_range": 0.006,
    "elementwise_affine": True, "norm_eps": 1e-06, "use_cache": True, "pad_token_id": None, "bos_token_id": 1,
    "eos_token_id": 2, "tie_word_embeddings": False, "fuse_norm": True, "last_layer_fuse_norm": True,
    "fuse_swiglu": True, "fuse_cross_entropy": True, "vocab_size": 32000, "fw_init_gain": 0.5,
    "use_fused_kernel": False, "fp32_states": False,
}  # fmt: skip

#: Fields that must have one value: the only one the project implements.
REQUIRED = {
    "model_type": "lact_swiglu", "qkv_bias": False, "attn_qk_norm": False, "qkv_silu": True, "lr_dim": 1,
    "lr_parameterization": "mamba", "learnable_ttt_scale": True, "ttt_loss_type": "dot_product",
    "ttt_prenorm": False, "elementwise_affine": True,
}  # fmt: skip

#: Fields that do not change the model's outputs here: kernel choices (fused norm / SwiGLU / loss /
#: LaCT kernels give the same maths; ``fp32_states`` keeps fast weights in fp32, which this
#: project always does), the RoPE cache length, generation and tokenizer ids, HF metadata.
#: Their values are kept in the checkpoint so ``lm-export`` writes them back.
INERT = (
    "use_fused_kernel", "fuse_swiglu", "fuse_cross_entropy", "fuse_norm", "last_layer_fuse_norm", "fp32_states",
    "max_position_embeddings", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "attention_bias",
    "architectures", "auto_map", "torch_dtype", "transformers_version", "_name_or_path",
)  # fmt: skip

#: Fields mapped onto the project's model (see :func:`lm_hparams`).
MAPPED = (
    "hidden_size", "num_hidden_layers", "num_attn_heads", "num_lact_heads", "inter_multi", "lact_chunk_size",
    "use_muon", "use_momentum", "w0_w2_low_rank", "fw_init_gain", "window_size", "rope_theta", "ttt_nope",
    "no_v_silu", "hidden_ratio", "intermediate_size", "hidden_act", "initializer_range", "norm_eps",
    "tie_word_embeddings", "vocab_size",
)  # fmt: skip

#: The official LM's fixed per-token base lr (``LaCTSWIGLULayer``: ``base_lr = 0.001``).
OFFICIAL_BASE_LR = 1e-3

#: Checkpoint key of the official fields that do not change the model (written back by ``lm-export``).
INERT_KEY = "official_lm_config"

#: (official parameter name, project parameter name) patterns; ``{i}`` is the layer.
LM_NAMES = (
    ("model.embeddings.weight", "embed.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "head.weight"),
    ("model.layers.{i}.attn_norm.weight", "blocks.{i}.mixer_norm.weight"),
    ("model.layers.{i}.mlp_norm.weight", "blocks.{i}.mlp_norm.weight"),
    ("model.layers.{i}.mlp.{p}_proj.weight", "blocks.{i}.mlp.{p}_proj.weight"),
    ("model.layers.{i}.attn.qkv.weight", "blocks.{i}.mixer.qkv.weight"),
    ("model.layers.{i}.attn.o_proj.weight", "blocks.{i}.mixer.o_proj.weight"),
    ("model.layers.{i}.attn.qk_{p}", "blocks.{i}.mixer.lact.inputs.qk_{p}"),
    ("model.layers.{i}.attn.lr_proj.{p}", "blocks.{i}.mixer.lact.lr_proj.{p}"),
    ("model.layers.{i}.attn.momentum_proj.0.{p}", "blocks.{i}.mixer.lact.momentum_proj.{p}"),
    ("model.layers.{i}.attn.ttt_scale_proj.{p}", "blocks.{i}.mixer.lact.gate.proj.{p}"),
    ("model.layers.{i}.attn.ttt_norm.weight", "blocks.{i}.mixer.lact.output_norm.weight"),
    ("model.layers.{i}.attn.w{p}.w_left", "blocks.{i}.mixer.lact.branch.w{p}_left"),
    ("model.layers.{i}.attn.w{p}.w_right", "blocks.{i}.mixer.lact.branch.w{p}_right"),
    ("model.layers.{i}.attn.w{p}", "blocks.{i}.mixer.lact.branch.w{p}"),
)  # fmt: skip


def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>[a-z0-9]+)")
    return re.compile(f"^{regex}$")


_TO_PROJECT = [(_pattern(a), b) for a, b in LM_NAMES]
_TO_OFFICIAL = [(_pattern(b), a) for a, b in LM_NAMES]


def _rename(name: str, rules) -> Optional[str]:
    for pattern, target in rules:
        m = pattern.match(name)
        if m:
            return target.format(**m.groupdict())
    return None


def full_config(config: Config) -> Config:
    """The official config with every omitted ``LaCTSWIGLUConfig`` field at its class default."""
    return {**OFFICIAL_DEFAULTS, **config}


def check_config(config: Config) -> None:
    """Refuse an unknown field or an unsupported value (one line naming it)."""
    known = set(MAPPED) | set(INERT) | set(REQUIRED)
    for key in config:
        if key not in known:
            raise ConversionError(f"config.json: unknown LaCTSWIGLUConfig field {key!r} (not converted)")
    for key, value in REQUIRED.items():
        if key in config and config[key] != value:
            raise ConversionError(f"config.json: {key}={config[key]!r} is not supported (only {value!r})")
    if config.get("hidden_act", "swish") not in ("swish", "silu"):
        raise ConversionError(f"config.json: hidden_act={config['hidden_act']!r} is not supported (only 'swish')")


def mlp_hidden(config: Config) -> int:
    """fla ``GatedMLP``'s width: ``intermediate_size``, or 256·⌈⌊hidden·ratio·2/3⌋ / 256⌉."""
    if config["intermediate_size"] is not None:
        return int(config["intermediate_size"])
    return 256 * math.ceil(int(config["hidden_size"] * config["hidden_ratio"] * 2 / 3) / 256)


def lm_hparams(config: Config, ns_dtype: str = "float32") -> dict[str, Any]:
    """``LMTask`` arguments (configs as plain dicts) for an official ``config.json``."""
    check_config(config)
    c = full_config(config)
    dim, hidden = c["hidden_size"], mlp_hidden(c)
    ratio = None if hidden == default_mlp_hidden(dim) else hidden / dim
    if ratio is not None and round(ratio * dim) != hidden:
        raise ConversionError(f"config.json: MLP width {hidden} is not representable as mlp_ratio · {dim}")
    rank = c["w0_w2_low_rank"]
    try:
        backbone = BackboneConfig(dim=dim, depth=c["num_hidden_layers"], heads=c["num_attn_heads"], mlp_ratio=ratio,
                                  rope_theta=float(c["rope_theta"]))  # fmt: skip
        fast_weight = FastWeightConfig(
            chunk=c["lact_chunk_size"], heads=c["num_lact_heads"], inter_multi=float(c["inter_multi"]),
            base_lr=OFFICIAL_BASE_LR, use_momentum=c["use_momentum"], use_muon=c["use_muon"], ns_coeffs="lm",
            ns_dtype=ns_dtype, w_init="low_rank" if rank > 0 else "normal", low_rank=rank if rank > 0 else 32,
            init_gain=c["fw_init_gain"], weight_norm=True,
        )  # fmt: skip
    except ValueError as err:
        raise ConversionError(f"config.json: {err}") from None
    return {
        "vocab_size": c["vocab_size"], "backbone": backbone.to_dict(), "window": c["window_size"], "memory": "lact",
        "fast_weight": fast_weight.to_dict(), "fast_rope": not c["ttt_nope"], "fast_v_silu": not c["no_v_silu"],
        "tie_embeddings": c["tie_word_embeddings"], "norm_eps": c["norm_eps"],
        "initializer_range": c["initializer_range"],
    }  # fmt: skip


def official_config(hp: dict[str, Any], inert: Optional[Config] = None) -> Config:
    """The official ``config.json`` of an ``LMTask``'s hyperparameters (+ the kept inert fields)."""
    if hp.get("memory", "lact") != "lact":
        raise ConversionError(f"memory={hp['memory']!r} has no official LaCT LM layout (only 'lact')")
    b, f = BackboneConfig.coerce(hp["backbone"]), FastWeightConfig.coerce(hp["fast_weight"])
    unsupported = {"base_lr": (f.base_lr, OFFICIAL_BASE_LR), "ns_coeffs": (f.ns_coeffs, "lm"),
                   "weight_norm": (f.weight_norm, True), "w_init": (f.w_init, "low_rank | normal")}  # fmt: skip
    for key, (value, official) in unsupported.items():
        if value != official and not (key == "w_init" and value in ("low_rank", "normal")):
            raise ConversionError(f"fast_weight.{key}={value!r} has no official equivalent (official: {official})")
    if f.chunk is None:
        raise ConversionError("fast_weight.chunk must be set for the official LM")
    hidden = b.mlp_hidden(default_mlp_hidden)
    out = {
        "model_type": "lact_swiglu", "hidden_size": b.dim, "num_hidden_layers": b.depth, "num_attn_heads": b.heads,
        "rope_theta": b.rope_theta, "num_lact_heads": f.heads, "inter_multi": f.inter_multi,
        "lact_chunk_size": f.chunk, "use_muon": f.use_muon, "use_momentum": f.use_momentum,
        "w0_w2_low_rank": f.low_rank if f.w_init == "low_rank" else -1, "fw_init_gain": f.init_gain,
        "window_size": hp.get("window", 512), "ttt_nope": not hp.get("fast_rope", True),
        "no_v_silu": not hp.get("fast_v_silu", True), "tie_word_embeddings": hp.get("tie_embeddings", False),
        "norm_eps": hp.get("norm_eps", 1e-6), "initializer_range": hp.get("initializer_range", 0.02),
        "vocab_size": hp["vocab_size"], "hidden_ratio": 4,
        "intermediate_size": None if hidden == default_mlp_hidden(b.dim) else hidden, "hidden_act": "swish",
        **{k: v for k, v in REQUIRED.items() if k != "model_type"},
    }  # fmt: skip
    for key in ("inter_multi", "rope_theta"):  # ints stay ints (as the released configs write them)
        if float(out[key]).is_integer():
            out[key] = int(out[key])
    return {**out, **(inert or {})}


def to_project_state(official: StateDict, model: torch.nn.Module, tied: bool) -> StateDict:
    """Official parameter names → the project's ``LaCTLM`` names (exact values; refuses mismatches)."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state, unknown = {}, []
    for name, tensor in official.items():
        target = _rename(name, _TO_PROJECT)
        if target is None:
            unknown.append(name)
        else:
            state[target] = tensor
    if tied:  # HF drops (safetensors) or repeats (.bin) the tied head
        head = state.pop("head.weight", None)
        if head is not None and not torch.equal(head, state.get("embed.weight", head)):
            raise ConversionError("tie_word_embeddings is set but lm_head.weight differs from model.embeddings.weight")
        expected.pop("head.weight", None)
    check_keys(state, expected, unknown, "the official state dict", lambda k: _rename(k, _TO_OFFICIAL) or k)
    return state


def to_official_state(state: StateDict, tied: bool) -> StateDict:
    """The project's ``LaCTLM`` names → the official names (the tied head is left out, as HF saves it)."""
    out = {}
    for name, tensor in state.items():
        if tied and name == "head.weight":
            continue
        target = _rename(name, _TO_OFFICIAL)
        if target is None:
            raise ConversionError(f"parameter {name!r} has no official LaCT LM name")
        out[target] = tensor
    return out


def read_official_weights(folder: Path) -> StateDict:
    """``model.safetensors`` (or its sharded index) or ``pytorch_model.bin`` of an HF folder."""
    from safetensors.torch import load_file

    single, index, legacy = folder / "model.safetensors", folder / "model.safetensors.index.json", folder / "pytorch_model.bin"
    if single.exists():
        return load_file(single)
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if legacy.exists():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ConversionError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def convert_lm(folder: Path, ns_dtype: str = "float32", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """An official HF folder → a Lightning checkpoint dict of ``LMTask``."""
    from tasks.lm import LMTask

    config_path = folder / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{folder}: no config.json")
    config = json.loads(config_path.read_text())
    hp = lm_hparams(config, ns_dtype)
    with torch.device("meta"):
        task = LMTask(**hp)
    state = to_project_state(read_official_weights(folder), task.model, hp["tie_embeddings"])
    if hp["tie_embeddings"]:
        state["head.weight"] = state["embed.weight"]
    return {
        "hyper_parameters": cli_hparams(task),
        "state_dict": {f"model.{k}": v.to(dtype) for k, v in state.items()},
        "pytorch-lightning_version": _lightning_version(),
        INERT_KEY: {k: config[k] for k in INERT if k in config},
    }


def export_lm(checkpoint: dict[str, Any], folder: Path) -> Config:
    """A Lightning checkpoint of ``LMTask`` → ``folder/config.json`` + ``folder/model.safetensors``."""
    from safetensors.torch import save_file

    hp = checkpoint["hyper_parameters"]
    if "vocab_size" not in hp or "backbone" not in hp:
        raise ConversionError("not an LMTask checkpoint (no vocab_size / backbone hyperparameters)")
    config = official_config(hp, checkpoint.get(INERT_KEY))
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    weights = to_official_state(state, config["tie_word_embeddings"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return config


def _lightning_version() -> str:
    import lightning

    return lightning.__version__
