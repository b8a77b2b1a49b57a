"""Sweep the LaCT chunk at a fixed sequence length and training budget: throughput and bpb.

    python -m experiments.chunk_size [--quick] [--out DIR]

Rows ``{chunk, tokens_per_s, gflops, fraction_of_peak, bpb}``: ``gflops`` / ``fraction_of_peak`` are
the fast-weight op's own forward + backward rate at the model's head sizes (``bench.ttt``'s
accounting, against this machine's fp32 matmul peak measured in the same run); ``tokens_per_s`` is
whole-model training throughput; ``bpb`` the held-out tinyshakespeare bits per byte after the
same number of training tokens. The attention window stays fixed, so only the update granularity
changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from bench.common import matmul_peak_gflops, median_seconds
from bench.ttt import Setting, op_runner
from experiments.common import FULL_MODEL, QUICK_MODEL, Budget, figure, parse_args, run_experiment, save_figure

HERE = Path(__file__).resolve().parent
QUICK = (Budget(steps=12, seq_len=256, batch_size=2, model=QUICK_MODEL), [16, 64, 256])
FULL = (Budget(steps=120, seq_len=2048, batch_size=2, model=FULL_MODEL), [16, 64, 256, 1024])  # 16-token chunks are slow


def op_rate(seq_len: int, chunk: int, heads: int, head_dim: int, peak: float) -> dict[str, float]:
    """The op's forward + backward GFLOP/s at one chunk size (3× the forward FLOPs, as bench.ttt)."""
    setting = Setting(seq_len, chunk, heads=heads, head_dim=head_dim, inter_multi=1)
    seconds = median_seconds(op_runner(setting, backward=True), repeats=3, warmup=1)
    gflops = 3 * setting.op_flops() / seconds / 1e9
    return {"gflops": gflops, "fraction_of_peak": gflops / peak}


def plot(rows: list[dict], out: Path) -> Path:
    fig, (ax_rate, ax_bpb) = figure(2)
    chunks = [r["chunk"] for r in rows]
    ax_rate.plot(chunks, [r["fraction_of_peak"] for r in rows], "o-", label="op fwd+bwd, fraction of peak")
    ax_rate.set_xscale("log", base=2)
    ax_rate.set_yscale("log")
    ax_rate.set_xlabel("LaCT chunk (tokens)")
    ax_rate.set_ylabel("fraction of fp32 matmul peak")
    twin = ax_rate.twinx()
    twin.plot(chunks, [r["tokens_per_s"] for r in rows], "s--", color="tab:orange", label="training tokens/s")
    twin.set_ylabel("training tokens/s")
    ax_rate.set_title("throughput vs chunk")
    ax_bpb.plot(chunks, [r["bpb"] for r in rows], "o-")
    ax_bpb.set_xscale("log", base=2)
    ax_bpb.set_xlabel("LaCT chunk (tokens)")
    ax_bpb.set_ylabel("held-out bits per byte")
    ax_bpb.set_title("quality at a fixed token budget")
    return save_figure(fig, out)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(__doc__, argv, HERE)
    budget, chunks = QUICK if args.quick else FULL
    dim, heads = budget.model["backbone.dim"], budget.model["fast_weight.heads"]
    window = min(chunks[-1], budget.seq_len // 4)
    peak = matmul_peak_gflops()

    def rows_of(chunk: int, run: dict) -> list[dict]:
        rate = op_rate(budget.seq_len, chunk, heads, dim // heads, peak)
        return [{"chunk": chunk, "tokens_per_s": run["tokens_per_s"], **rate, "bpb": run["bpb"]}]

    settings = [(f"chunk{c}", {"fast_weight.chunk": c, "window": window}, c) for c in chunks]
    run_experiment(args, budget, settings, rows_of, plot, window=window, peak_gflops=peak)

if __name__ == "__main__":
    main()
