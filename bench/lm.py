"""Benchmark of the LM (configs/lm.yaml's model): LaCT vs the same model with full causal attention.

    python -m bench.lm [--quick] [--threads N] [--out bench/results/lm.json]

1. Training: tokens/s of one optimizer step (forward, backward, AdamW) on one sequence of 2K, 8K
   and 32K tokens, and the peak resident memory of a fresh process doing it. Short sequences
   time 2 steps after a warm-up step; 32K, where a step takes minutes on a CPU, times 1.
2. Generation: ms per new token after a prompt of growing length (prefill not timed), and the
   size of the decoding cache. LaCT's cost is flat (window KV + fast weights); full attention's KV
   cache and per-token time grow with the context.

Every setting runs in its own process, so each peak-memory number is that setting's alone.
``--quick`` runs only the short settings (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import inspect
import resource
import time
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from bench.common import in_fresh_process, machine_info, print_table, write_json
from lact_app.models.lm import LaCTLM
from lact_app.nn import BackboneConfig, FastWeightConfig

CONFIG = Path(__file__).resolve().parent.parent / "configs/lm.yaml"
MEMORIES = ("lact", "full_attention")


def model_args(config: Path = CONFIG) -> dict:
    """The LaCTLM arguments of a task config's ``model.init_args`` (``backbone``, ``fast_weight`` as dicts)."""
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    names = set(inspect.signature(LaCTLM).parameters)
    return {k: v for k, v in init_args.items() if k in names}


def build(memory: str) -> LaCTLM:
    torch.manual_seed(0)
    args = model_args()
    configs = {"backbone": BackboneConfig(**args["backbone"]), "fast_weight": FastWeightConfig(**args["fast_weight"])}
    return LaCTLM(**{**args, **configs, "memory": memory})


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def train_setting(memory: str, seq_len: int) -> dict:
    """tokens/s of full training steps on one sequence of ``seq_len`` tokens (fresh process)."""
    model = build(memory)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.vocab_size, (1, seq_len + 1))

    def step() -> None:
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    short = seq_len <= 8192
    if short:
        step()
    timed = 2 if short else 1
    start = time.perf_counter()
    for _ in range(timed):
        step()
    seconds = (time.perf_counter() - start) / timed
    return {"memory": memory, "seq_len": seq_len, "s_per_step": seconds, "tokens_per_s": seq_len / seconds,
            "peak_rss_gib": peak_rss_gib()}


def cache_mib(cache) -> float:
    """MiB of every tensor an LMCache holds (KV window, pending chunk, fast weights + momentum)."""
    tensors = []
    for layer in cache:
        tensors += [layer.keys, layer.values, *(layer.pending or ())]
        if layer.fast is not None:
            tensors += [getattr(layer.fast, f.name) for f in fields(layer.fast)]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20


@torch.no_grad()
def generation_setting(memory: str, context: int, new_tokens: int) -> dict:
    """ms per decoded token after a ``context``-token prompt (fresh process)."""
    model = build(memory).eval()
    cache = model.new_cache()
    logits = model(torch.randint(0, model.vocab_size, (1, context)), cache)
    token = logits[:, -1:].argmax(-1)
    model(token, cache)  # warm-up step
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = model(token, cache)[:, -1:].argmax(-1)
    ms = (time.perf_counter() - start) / new_tokens * 1e3
    return {"memory": memory, "context": context, "ms_per_token": ms, "cache_mib": cache_mib(cache)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short settings only")
    parser.add_argument("--out", default="bench/results/lm.json")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens timed per context")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per setting (0: torch's default)")
    args = parser.parse_args()
    seq_lens = [2048] if args.quick else [2048, 8192, 32768]
    contexts = [256, 2048] if args.quick else [512, 2048, 8192, 32768]
    training = [in_fresh_process(args.threads, train_setting, b, n) for n in seq_lens for b in MEMORIES]
    print_table(training, ["memory", "seq_len", "s_per_step", "tokens_per_s", "peak_rss_gib"])
    generation = [in_fresh_process(args.threads, generation_setting, b, c, args.new_tokens)
                  for c in contexts for b in MEMORIES]
    print_table(generation, ["memory", "context", "ms_per_token", "cache_mib"])
    machine = {**machine_info(), "threads": args.threads or torch.get_num_threads()}
    write_json(args.out, {"machine": machine, "model": model_args(), "quick": args.quick,
                          "training": training, "generation": generation})


if __name__ == "__main__":
    main()
