"""Benchmark of the fast-weight op and LaCTLayer: GFLOP/s, fraction of the measured matmul peak, tokens/s.

    python -m bench.ttt [--compile] [--quick] [--out bench/results/ttt.json]
    python -m bench.ttt --recompute [--rounds N] [--threads N]   # only the ``recompute`` section

``--recompute`` measures the op's memory-saving backward against plain autograd through the same
maths, each setting in a fresh process: the peak memory growth of one forward + backward of the op
alone (32K tokens, 4 heads, D 64, H 128, chunks of 2048; peak RSS minus the RSS with the inputs
made), and the time of one training step of the ``bench/lm_model.yaml`` LM with ``recompute`` on and off
(alternating, median of ``--rounds``). Each mode rewrites only its own section of the results file.

FLOPs: the op does 18·D·H per token per head for update + apply (LACT_SPEC.md §1.13: update 12·D·H,
apply 6·D·H); tokens of a causal schedule's last chunk only apply (6·D·H). Forward+backward is
counted as 3× the forward FLOPs (the usual "model FLOPs"; the true backward through the inner
updates costs more). The layer adds 2 FLOPs per weight of its linear projections per token.
The peak is this machine's fp32 rate on a fixed bmm (8 × 1024³, median of 5), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import (in_fresh_process, machine_info, matmul_peak_gflops, median_seconds, peak_rss_gib, print_table,
                          write_json)
from bench.lm import model_args
from lact_app.models.lm import LaCTLM
from lact_app.nn import BackboneConfig, FastWeightConfig, LaCTLayer
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


def op_runner(s: Setting, backward: bool, op=lact_swiglu, recompute: bool = False):
    w0, w1, w2, q, k, v, lr = op_inputs(s, backward)
    schedule = s.schedule()

    def run():
        with torch.set_grad_enabled(backward):
            o, _ = op(FastWeights.from_initial(w0, w1, w2), q, k, v, lr, schedule, recompute=recompute)
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


#: The op setting of the memory comparison (issue #14): 32K tokens, 4 heads, D 64, H 128, chunks of 2048.
MEMORY_SETTING = Setting(32768, 2048, heads=4, head_dim=64, inter_multi=2)


def rss_mib() -> float:
    """The resident memory of this process now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def op_memory(s: Setting, recompute: bool) -> dict:
    """Peak memory growth and time of one forward + backward of the op (run in a fresh process)."""
    run = op_runner(s, True, recompute=recompute)
    before = rss_mib()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = peak_rss_gib() * 1024
    return {"what": "op fwd+bwd", "setting": s.name, "recompute": recompute, "s": seconds,
            "peak_growth_mib": peak - before}


def lm_step(seq_len: int, recompute: bool) -> dict:
    """Seconds of one training step (forward, backward, AdamW; median of 3 after a warm-up step) of
    the bench/lm_model.yaml LM on one sequence (run in a fresh process)."""
    torch.manual_seed(0)
    args = model_args()
    fast_weight = FastWeightConfig(**{**args["fast_weight"], "recompute": recompute})
    model = LaCTLM(**{**args, "backbone": BackboneConfig(**args["backbone"]), "fast_weight": fast_weight})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.vocab_size, (1, seq_len + 1))

    def step() -> None:
        logits = model(ids[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = median_seconds(step, repeats=3, warmup=1)
    return {"what": "LM training step", "setting": f"L={seq_len}", "recompute": recompute, "s": seconds,
            "peak_rss_gib": peak_rss_gib()}


def recompute_section(rounds: int, threads: int, lm_seq_len: int) -> dict:
    """Recompute on vs off, alternating fresh processes; medians over ``rounds``."""
    runs = []
    for _ in range(rounds):
        for recompute in (False, True):
            runs.append(in_fresh_process(threads, op_memory, MEMORY_SETTING, recompute))
            runs.append(in_fresh_process(threads, lm_step, lm_seq_len, recompute))
            print(*runs[-2:], sep="\n")
    rows = []
    for what in ("op fwd+bwd", "LM training step"):
        for recompute in (False, True):
            mine = [r for r in runs if r["what"] == what and r["recompute"] == recompute]
            row = {**mine[0], "s": statistics.median(r["s"] for r in mine)}
            for key in ("peak_growth_mib", "peak_rss_gib"):
                if key in row:
                    row[key] = statistics.median(r[key] for r in mine)
            rows.append(row)
    op_off, op_on, lm_off, lm_on = rows
    summary = {"op_peak_growth_ratio": op_on["peak_growth_mib"] / op_off["peak_growth_mib"],
               "op_time_ratio": op_on["s"] / op_off["s"], "lm_step_time_ratio": lm_on["s"] / lm_off["s"]}
    return {"machine": {**machine_info(), "threads": threads or torch.get_num_threads()}, "rounds": rounds,
            "rows": rows, "summary": summary}


def write_sections(path: str, sections: dict) -> None:
    """Rewrite some sections of a results file, keeping the others."""
    old = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    write_json(path, {**old, **sections})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd op and layer")
    parser.add_argument("--quick", action="store_true", help="fewer settings and repeats (smoke run)")
    parser.add_argument("--max-len", type=int, default=None, help="skip settings longer than this")
    parser.add_argument("--out", default="bench/results/ttt.json")
    parser.add_argument("--recompute", action="store_true", help="only the recompute on/off section")
    parser.add_argument("--rounds", type=int, default=2, help="recompute: alternating on/off rounds")
    parser.add_argument("--threads", type=int, default=1, help="recompute: torch threads per process (0: default)")
    parser.add_argument("--lm-seq-len", type=int, default=8192, help="recompute: tokens of the LM training step")
    args = parser.parse_args(argv)
    if args.recompute:
        section = recompute_section(args.rounds, args.threads, args.lm_seq_len)
        print(json.dumps(section["summary"], indent=2))
        write_sections(args.out, {"recompute": section})
        return

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
        write_sections(args.out, {"machine": machine_info(), "peak_gflops": peak, "rows": rows,
                                  "config": {"heads": 4, "head_dim": 128, "inter_multi": 2, "dtype": "fp32"}})
    print_table(rows, ["what", "setting", "pass", "ms", "GFLOP/s", "of_peak", "tokens/s"])


if __name__ == "__main__":
    main()
