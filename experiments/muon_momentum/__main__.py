"""The fast-weight update rule at a fixed budget: {plain, momentum, Muon, momentum + Muon}.

    python -m experiments.muon_momentum [--quick] [--out DIR]

Rows ``{use_muon, use_momentum, bpb, tokens_per_s}`` (the fast-weight config's knob names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from experiments.common import FULL_MODEL, QUICK_MODEL, Budget, figure, parse_args, prepare_corpus, run_lm
from experiments.common import save_figure, workspace, write_results

HERE = Path(__file__).resolve().parent
RULES = [(False, False), (False, True), (True, False), (True, True)]  # (use_muon, use_momentum)
QUICK = (Budget(steps=12, seq_len=256, batch_size=2, model={**QUICK_MODEL, "fast_weight.chunk": 64}), RULES)
FULL = (Budget(steps=100, seq_len=2048, batch_size=2, model={**FULL_MODEL, "fast_weight.chunk": 256}), RULES)


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
    rows = []
    with workspace(args) as root:
        corpus = prepare_corpus(root)
        for use_muon, use_momentum in rules:
            overrides = {"fast_weight.use_muon": use_muon, "fast_weight.use_momentum": use_momentum, "window": 256}
            run = run_lm(f"muon{use_muon:d}_momentum{use_momentum:d}", root, corpus, budget, overrides)
            rows.append({"use_muon": use_muon, "use_momentum": use_momentum, "bpb": run["bpb"],
                         "tokens_per_s": run["tokens_per_s"]})  # fmt: skip
            print(rows[-1], flush=True)
    setup = {"budget": vars(budget) | {"tokens": budget.tokens}, "window": 256,
             "corpus": "tinyshakespeare: train 0-90 %, test 90-100 %", "quick": args.quick}  # fmt: skip
    write_results(args.out, rows, setup)
    plot(rows, args.out)


if __name__ == "__main__":
    main()
