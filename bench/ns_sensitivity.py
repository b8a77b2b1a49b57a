"""How far a bf16 Newton–Schulz moves the fast-weight op's output, and how chaotic that is.

    python -m bench.ns_sensitivity [--official PATH/lact_llm/lact_model/ttt_operation.py] [--out ...]

Backs README's "known difference" of converted checkpoints. For the LM op with momentum and Muon at
the official tiny-model sizes (head dim 32, chunk 8) it measures, per seed:
- ``gap``: |bf16-NS output − fp32-NS output|, the official fp32-vs-bf16 gap the converter tests use;
- ``ours_noise``: how far our bf16-NS output moves when q, k, v are perturbed by 1e-7 (relative):
  the last fp32 bit of anything upstream.
With ``--official`` (a local copy of the official code; nothing is downloaded) it runs the official
``block_causal_lact_swiglu`` on the same inputs too: ``official_noise`` (the same perturbation of the
official op), ``ours_vs_official_fp32`` and ``ours_vs_official_bf16``. If the official op's own
``official_noise`` is a large fraction of ``gap``, no implementation that is not bit-identical to
the official kernels can land within a small fraction of the gap.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from bench.common import machine_info, print_table, write_json
from lact_app.ops import LM_NS_COEFFS, FastWeights, causal_schedule, lact_swiglu, newton_schulz

NOISE = 1e-7
CHUNK = 8
#: Perturbations per seed; a row reports the largest move (one draw may flip no bf16 rounding).
DRAWS = 3


def make_inputs(seed: int, B: int = 4, T: int = 40, D: int = 32) -> dict[str, torch.Tensor]:
    """Random op inputs at the official tiny LM's sizes: w0, w2: [B, D, D]; w1: [B, D, D]; q, k, v: [B, T, D]."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    return {
        "w0": randn(B, D, D) / D**0.5, "w1": randn(B, D, D) / D**0.5, "w2": randn(B, D, D) / D**0.5,
        "q": F.normalize(randn(B, T, D), dim=-1), "k": F.normalize(randn(B, T, D), dim=-1), "v": randn(B, T, D),
        "lr": F.softplus(randn(B, T, 3) - 2), "momentum": torch.sigmoid(randn(B, T, 1)),
    }  # fmt: skip


def perturbed(t: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """q, k, v scaled by (1 + 1e-7·noise): a change in their last fp32 bits."""
    g = torch.Generator().manual_seed(seed)
    out = dict(t)
    for name in ("q", "k", "v"):
        out[name] = t[name] * (1 + NOISE * torch.randn(t[name].shape, generator=g))
    return out


def ours(t: dict[str, torch.Tensor], ns_dtype: Optional[torch.dtype]) -> torch.Tensor:
    """The project's op, shifted block-causal training schedule.  -> [B, T, D]"""
    fw = FastWeights.from_initial(t["w0"], t["w1"], t["w2"])
    schedule = causal_schedule(t["q"].size(1), CHUNK, update_last=False)
    return lact_swiglu(fw, t["q"], t["k"], t["v"], t["lr"], schedule, t["momentum"], use_muon=True,
                       ns_dtype=ns_dtype)[0]  # fmt: skip


def official_op(path: Path) -> Callable[[dict[str, torch.Tensor], bool], torch.Tensor]:
    """``op(inputs, bf16_ns)`` running the official ``block_causal_lact_swiglu`` from a local file, eagerly.

    The official code always runs Newton–Schulz in bf16; for the fp32 variant its
    ``zeropower_via_newtonschulz5`` is swapped for the same expressions in fp32.
    """
    spec = importlib.util.spec_from_file_location("official_ttt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    block = _eager(module.block_causal_lact_swiglu)
    bf16_ns = _eager(module.zeropower_via_newtonschulz5)

    def op(t: dict[str, torch.Tensor], bf16: bool) -> torch.Tensor:
        module.zeropower_via_newtonschulz5 = bf16_ns if bf16 else fp32_ns
        lr = t["lr"]
        return block(t["w0"], t["w1"], t["w2"], t["q"], t["k"], t["v"], lr[..., 0:1], lr[..., 1:2], lr[..., 2:3],
                     chunk_size=CHUNK, use_muon=True, momentum=t["momentum"])  # fmt: skip

    return op


def fp32_ns(g: torch.Tensor) -> torch.Tensor:
    """The official iteration's expressions, in fp32."""
    return newton_schulz(g, LM_NS_COEFFS, dtype=torch.float32)


def _eager(fn: Callable) -> Callable:
    """The function under the official ``@torch.compile`` (compiling costs minutes on a CPU)."""
    return getattr(fn, "_torchdynamo_orig_callable", fn)


def largest_move(op: Callable[[dict], torch.Tensor], t: dict[str, torch.Tensor], out: torch.Tensor) -> float:
    """max over DRAWS perturbations of |op(perturbed t) − out|."""
    return max((op(perturbed(t, 10_000 + draw)) - out).abs().max().item() for draw in range(DRAWS))


def measure(seed: int, official: Optional[Callable]) -> dict:
    t = make_inputs(seed)
    ours_bf16, ours_fp32 = ours(t, torch.bfloat16), ours(t, None)
    row = {
        "seed": seed,
        "gap": (ours_bf16 - ours_fp32).abs().max().item(),
        "ours_noise": largest_move(lambda p: ours(p, torch.bfloat16), t, ours_bf16),
    }
    if official is not None:
        off_bf16, off_fp32 = official(t, True), official(t, False)
        row["gap"] = (off_bf16 - off_fp32).abs().max().item()
        row["official_noise"] = largest_move(lambda p: official(p, True), t, off_bf16)
        row["ours_vs_official_fp32"] = (ours_fp32 - off_fp32).abs().max().item()
        row["ours_vs_official_bf16"] = (ours_bf16 - off_bf16).abs().max().item()
    for key in ("ours_noise", "official_noise", "ours_vs_official_bf16"):
        if key in row:
            row[f"{key}_of_gap"] = row[key] / row["gap"]
    return row


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, help="local official lact_llm/lact_model/ttt_operation.py")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default="bench/results/ns_sensitivity.json")
    args = parser.parse_args(argv)
    official = None if args.official is None else official_op(args.official)
    rows = [measure(seed, official) for seed in range(args.seeds)]
    print_table(rows, [c for c in rows[0] if c == "seed" or c.endswith("gap") or c.endswith("fp32")])
    write_json(args.out, {"machine": machine_info(), "noise": NOISE, "draws": DRAWS, "chunk": CHUNK,
                          "official": args.official is not None, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
