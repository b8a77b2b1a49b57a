"""The fast-weight update rule at a fixed budget: {plain, momentum, Muon, momentum + Muon}.

    python -m experiments.muon_momentum [--quick] [--out DIR]

Rows ``{use_muon, use_momentum, bpb, tokens_per_s}`` (the fast-weight config's knob names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from experiments.common import FULL_MODEL, QUICK_MODEL, Budget, figure, parse_args, run_experiment, save_figure

HERE = Path(__file__).resolve().parent
WINDOW = 256
RULES = [(False, False), (False, True), (True, False), (True, True)]  # (use_muon, use_momentum)
QUICK = (Budget(steps=12, seq_len=256, batch_size=2, model={**QUICK_MODEL, "fast_weight.chunk": 64}), RULES)
FULL = (Budget(steps=200, seq_len=2048, batch_size=2, model={**FULL_MODEL, "fast_weight.chunk": 256}), RULES)


def label(row: dict) -> str:
    parts = [name for name, on in (("momentum", row["use_momentum"]), ("Muon", row["use_muon"])) if on]
    return " + ".join(parts) or "plain"


def plot(rows: list[dict], out: Path) -> Path:
    fig, (ax_bpb, ax_speed) = figure(2)
    names = [label(r) for r in rows]
    ax_bpb.bar(names, [r["bpb"] for r in rows])
    ax_bpb.set_ylim(min(r["bpb"] for r in rows) * 0.95, max(r["bpb"] for r in rows) * 1.02)
    ax_bpb.set_ylabel("held-out bits per byte")
    ax_bpb.set_title("quality")
    ax_speed.bar(names, [r["tokens_per_s"] for r in rows], color="tab:orange")
    ax_speed.set_ylabel("training tokens/s")
    ax_speed.set_title("speed")
    return save_figure(fig, out)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(__doc__, argv, HERE)
    budget, rules = QUICK if args.quick else FULL

    def rows_of(key: tuple[bool, bool], run: dict) -> list[dict]:
        use_muon, use_momentum = key
        return [{"use_muon": use_muon, "use_momentum": use_momentum, "bpb": run["bpb"],
                 "tokens_per_s": run["tokens_per_s"]}]  # fmt: skip

    settings = [(f"muon{mu:d}_momentum{mo:d}", {"fast_weight.use_muon": mu, "fast_weight.use_momentum": mo,
                                                 "window": WINDOW}, (mu, mo)) for mu, mo in rules]  # fmt: skip
    run_experiment(args, budget, settings, rows_of, plot, window=WINDOW)

if __name__ == "__main__":
    main()
