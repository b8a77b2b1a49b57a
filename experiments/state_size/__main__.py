"""Grow the fast-weight state (``inter_multi``, ``heads``) at a fixed training budget: bpb.

    python -m experiments.state_size [--quick] [--out DIR]

Rows ``{inter_multi, heads, params, state_params, bpb}``: ``params`` counts the model's trainable
parameters, ``state_params`` the fast-weight state one sequence carries (w0, w1, w2 of every head
of every block: depth · heads · 3 · D · H with D = dim / heads, H = inter_multi · D).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from experiments.common import FULL_MODEL, QUICK_MODEL, Budget, figure, parse_args, run_experiment, save_figure

HERE = Path(__file__).resolve().parent
WINDOW = 256
#: (budget, [(heads, inter_multi)])
QUICK = (Budget(steps=12, seq_len=256, batch_size=2, model={**QUICK_MODEL, "fast_weight.chunk": 64}), [(2, 1.0), (2, 4.0)])
FULL = (Budget(steps=200, seq_len=2048, batch_size=2, model={**FULL_MODEL, "fast_weight.chunk": 256}),
        [(2, 1.0), (2, 2.0), (2, 4.0), (1, 1.0)])  # fast heads must hold whole RoPE pieces (attention head dim 64)


def state_params(budget: Budget, heads: int, inter_multi: float) -> int:
    """Numbers in one sequence's fast-weight state: depth · heads · 3 · D · H."""
    D = budget.model["backbone.dim"] // heads
    return budget.model["backbone.depth"] * heads * 3 * D * int(inter_multi * D)


def plot(rows: list[dict], out: Path) -> Path:
    fig, (ax,) = figure(1)
    for heads in sorted({r["heads"] for r in rows}):
        mine = [r for r in rows if r["heads"] == heads]
        ax.plot([r["state_params"] for r in mine], [r["bpb"] for r in mine], "o-", label=f"{heads} fast-weight heads")
        for r in mine:
            ax.annotate(f"×{r['inter_multi']:g}", (r["state_params"], r["bpb"]), textcoords="offset points",
                        xytext=(4, 4))  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("fast-weight state per sequence (numbers)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title("bpb vs fast-weight state (labels: inter_multi)")
    ax.legend()
    return save_figure(fig, out)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(__doc__, argv, HERE)
    budget, heads_and_multipliers = QUICK if args.quick else FULL

    def rows_of(key: tuple[int, float], run: dict) -> list[dict]:
        heads, inter_multi = key
        return [{"inter_multi": inter_multi, "heads": heads, "params": run["params"],
                 "state_params": state_params(budget, heads, inter_multi), "bpb": run["bpb"]}]  # fmt: skip

    settings = [(f"heads{h}_x{m:g}", {"fast_weight.heads": h, "fast_weight.inter_multi": m, "window": WINDOW}, (h, m))
                for h, m in heads_and_multipliers]  # fmt: skip
    run_experiment(args, budget, settings, rows_of, plot, window=WINDOW)

if __name__ == "__main__":
    main()
