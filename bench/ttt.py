"""Benchmark of the fast-weight op and LaCTLayer: GFLOP/s, fraction of the measured matmul peak, tokens/s.

    python -m bench.ttt [--compile] [--quick] [--out bench/results/ttt.json]

FLOPs: the op does 18·D·H per token per head for update + apply (LACT_SPEC.md §1.13: update 12·D·H,
apply 6·D·H); tokens of a causal schedule's last chunk only apply (6·D·H). Forward+backward is
counted as 3× the forward FLOPs (the usual "model FLOPs"; the true backward through the inner
updates costs more). The layer adds 2 FLOPs per weight of its linear projections per token.
The peak is this machine's fp32 rate on a fixed bmm (8 × 1024³, median of 5), measured in the same run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bench.common import machine_info, matmul_peak_gflops, median_seconds, print_table, write_json
from lact_app.nn import FastWeightConfig, LaCTLayer
from lact_app.ops import FastWeights, bidirectional_schedule, causal_schedule, lact_swiglu


@dataclass(frozen=True)
class Setting:
    L: int
    chunk: int | None  # None: bidirectional
    heads: int = 4
    head_dim: int = 128
    inter_multi: int = 2

    @property
    def hidden(self) -> int:
        return self.head_dim * self.inter_multi

    def schedule(self):
        return bidirectional_schedule(self.L) if self.chunk is None else causal_schedule(self.L, self.chunk)

    def op_flops(self) -> float:
        """Forward FLOPs of the op: 12·D·H per updating token + 6·D·H per applied token, all heads."""
        updated = sum(op.end - op.start for op in self.schedule() if op.update)
        return (12 * updated + 6 * self.L) * self.head_dim * self.hidden * self.heads

    @property
    def name(self) -> str:
        return f"L={self.L} " + ("bidirectional" if self.chunk is None else f"chunk={self.chunk}")


def op_inputs(s: Setting, requires_grad: bool):
    """Initial weights and per-token inputs with heads folded into the batch (B = heads)."""
    B, D, H = s.heads, s.head_dim, s.hidden
    t = [torch.randn(B, H, D) / D**0.5, torch.randn(B, D, H) / H**0.5, torch.randn(B, H, D) / D**0.5]
    t += [torch.nn.functional.normalize(torch.randn(B, s.L, D), dim=-1) for _ in range(2)]
    t += [torch.randn(B, s.L, D), torch.rand(B, s.L, 3) * 0.01]
    return [x.requires_grad_(requires_grad) for x in t]


def op_runner(s: Setting, backward: bool, op=lact_swiglu):
    w0, w1, w2, q, k, v, lr = op_inputs(s, backward)
    schedule = s.schedule()

    def run():
        with torch.set_grad_enabled(backward):
            o, _ = op(FastWeights.from_initial(w0, w1, w2), q, k, v, lr, schedule)
            if backward:
                o.square().sum().backward()

    return run


def layer_runner(s: Setting, backward: bool, compile_layer: bool):
    dim = s.heads * s.head_dim
    layer = LaCTLayer(dim, FastWeightConfig(heads=s.heads, inter_multi=s.inter_multi, base_lr=0.01))
    forward = torch.compile(layer) if compile_layer else layer
    x = torch.randn(1, s.L, dim, requires_grad=backward)
    schedule = s.schedule()
    linear_params = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))

    def run():
        with torch.set_grad_enabled(backward):
            y, _ = forward(x, schedule)
            if backward:
                y.square().sum().backward()

    return run, 2 * s.L * linear_params


def measure(name: str, s: Setting, run, fwd_flops: float, backward: bool, peak: float, repeats: int) -> dict:
    seconds = median_seconds(run, repeats=repeats, warmup=2)
    flops = fwd_flops * (3 if backward else 1)
    gflops = flops / seconds / 1e9
    return {
        "what": name, "setting": s.name, "pass": "fwd+bwd" if backward else "fwd",
        "ms": seconds * 1e3, "GFLOP/s": gflops, "of_peak": gflops / peak, "tokens/s": s.L / seconds,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd op and layer")
    parser.add_argument("--quick", action="store_true", help="fewer settings and repeats (smoke run)")
    parser.add_argument("--max-len", type=int, default=None, help="skip settings longer than this")
    parser.add_argument("--out", default="bench/results/ttt.json")
    args = parser.parse_args(argv)

    settings = [Setting(4096, None), Setting(4096, 512), Setting(4096, 2048), Setting(16384, 4096)]
    if args.quick:
        settings = [Setting(1024, None), Setting(1024, 256)]
    settings = [s for s in settings if args.max_len is None or s.L <= args.max_len]
    repeats = 2 if args.quick else 5
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    variants = [("eager", lact_swiglu, False)]
    if args.compile:
        variants.append(("compiled", torch.compile(lact_swiglu), True))
    rows = []
    for s in settings:
        for label, op, compiled in variants:
            for backward in (False, True):
                rows.append(measure(f"op {label}", s, op_runner(s, backward, op), s.op_flops(), backward, peak, repeats))
                run, proj_flops = layer_runner(s, backward, compiled)
                rows.append(measure(f"LaCTLayer {label}", s, run, s.op_flops() + proj_flops, backward, peak, repeats))
            print_table(rows[-4:], ["what", "setting", "pass", "ms", "GFLOP/s", "of_peak", "tokens/s"])
        # Written after every setting, so a long run keeps what it measured.
        write_json(args.out, {"machine": machine_info(), "peak_gflops": peak, "rows": rows,
                              "config": {"heads": 4, "head_dim": 128, "inter_multi": 2, "dtype": "fp32"}})
    print_table(rows, ["what", "setting", "pass", "ms", "GFLOP/s", "of_peak", "tokens/s"])


if __name__ == "__main__":
    main()
