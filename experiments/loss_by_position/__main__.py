"""Loss by position in long sequences: LaCT hybrid vs window attention only vs full attention.

    python -m experiments.loss_by_position [--quick] [--out DIR]

Same budget and data for the three ``memory`` kinds; the test loss averaged in equal position
buckets of the held-out sequences. Rows ``{memory, position, loss}`` (``position``: the bucket's
first token). The paper's claim: with LaCT the loss keeps falling with position beyond the
attention window, while window attention alone flattens once the window is full.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from experiments.common import FULL_MODEL, QUICK_MODEL, Budget, figure, parse_args, run_experiment, save_figure

HERE = Path(__file__).resolve().parent
MEMORIES = ["lact", "none", "full_attention"]
#: (budget, attention window)
QUICK = (Budget(steps=12, seq_len=512, batch_size=1, model={**QUICK_MODEL, "fast_weight.chunk": 64}), 64)
FULL = (Budget(steps=100, seq_len=8192, batch_size=1, model={**FULL_MODEL, "fast_weight.chunk": 512}), 512)


def plot(rows: list[dict], window: int, out: Path) -> Path:
    fig, (ax,) = figure(1)
    for memory in MEMORIES:
        mine = [r for r in rows if r["memory"] == memory]
        ax.plot([r["position"] for r in mine], [r["loss"] for r in mine], "o-", label=memory)
    ax.axvline(window, color="grey", linestyle=":", label="attention window")
    ax.set_xlabel("position in the sequence (bucket start)")
    ax.set_ylabel("test loss (nats / token)")
    ax.set_title("loss by position")
    ax.legend()
    return save_figure(fig, out)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(__doc__, argv, HERE)
    budget, window = QUICK if args.quick else FULL

    def rows_of(memory: str, run: dict) -> list[dict]:
        positions = run["positions"]
        return [{"memory": memory, "position": start, "loss": loss}
                for start, loss in zip(positions["bucket_start"], positions["loss"])]  # fmt: skip

    settings = [(m, {"memory": m, "window": window, "position_buckets": 16}, m) for m in MEMORIES]
    run_experiment(args, budget, settings, rows_of, lambda rows, out: plot(rows, window, out), window=window)

if __name__ == "__main__":
    main()
