"""Benchmark of the LM (the 4 × 256 model of ``bench/lm_model.yaml``): LaCT vs the same model with full causal attention.

    python -m bench.lm [--quick] [--threads N] [--sections training,generation,packing] [--out bench/results/lm.json]

1. Training: tokens/s of one optimizer step (forward, backward, AdamW) on one sequence of 2K, 8K
   and 32K tokens, and the peak resident memory of a fresh process doing it. Short sequences
   time 2 steps after a warm-up step; 32K, where a step takes minutes on a CPU, times 1.
2. Generation: ms per new token after a prompt of growing length (prefill not timed; LaCT and
   full attention decode in alternating blocks of 32 tokens in one process, 5 blocks each, and
   each row is its median block), wall time and the process's CPU time (steadier on a
   shared machine: it leaves out the time other processes hold the cores), and the size of the
   decoding cache (its preallocated buffers). LaCT's
   cost is flat (window KV ring + one chunk of pending inputs + fast weights); full attention's KV
   cache and per-token time grow with the context.
3. Packing: useful tokens/s (real next-token labels per second of training step) and padding
   fraction at 8K and 32K on the standard library's sources (many small documents), packed
   (``cu_seqlens``) vs windowed (one document per window, as ``pack: false``); and the step time of
   a 32K row of hundreds of short documents vs the same tokens as one sequence (what the
   per-document schedule and masks cost).

Sections not run keep their previous results in ``--out``.
Every setting runs in its own process, so each peak-memory number is that setting's alone (the
generation rows of one context share theirs: they measure time, and the cache by its tensors).
``--quick`` runs only the short settings (a smoke test of the script).
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import time
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from bench.common import in_fresh_process, machine_info, peak_rss_gib, print_table, write_json
from datamodules.packing import PackedWindows, WindowBuilder
from datamodules.text import stdlib_files
from datamodules.tokenizers import ByteTokenizer
from lact_app.constants import IGNORE_INDEX
from lact_app.models.lm import LaCTLM
from lact_app.nn import BackboneConfig, FastWeightConfig

CONFIG = Path(__file__).resolve().parent / "lm_model.yaml"
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


def stdlib_documents(count: int = 2000) -> list[torch.Tensor]:
    """``count`` standard-library sources (a fixed random sample) as <bos> + UTF-8 byte tokens."""
    _, files = stdlib_files()
    tokenizer = ByteTokenizer()
    sample = random.Random(0).sample(files, min(count, len(files)))
    return [torch.cat([torch.tensor([tokenizer.bos_id]), tokenizer.encode(f.read_text("utf-8", "replace"))])
            for f in sample]


def windowed(docs: list[torch.Tensor], seq_len: int) -> list[dict]:
    """One document per window (its first ``seq_len`` + 1 tokens), padded: ``pack: false``."""
    tokenizer, windows = ByteTokenizer(), []
    for ids in docs:
        piece = ids[: seq_len + 1]
        inputs = torch.full((seq_len,), tokenizer.pad_id)
        labels = torch.full((seq_len,), IGNORE_INDEX)
        inputs[: piece.numel() - 1], labels[: piece.numel() - 1] = piece[:-1], piece[1:]
        windows.append({"input_ids": inputs[None], "labels": labels[None], "cu_seqlens": None})
    return windows


def packed(docs: list[torch.Tensor], seq_len: int) -> list[dict]:
    """The documents packed into windows of ``seq_len`` (the training packer)."""
    tokenizer = ByteTokenizer()
    return list(PackedWindows(WindowBuilder(seq_len, tokenizer.pad_id, tokenizer.token_bytes), 1)(docs))


def step_seconds(model: LaCTLM, batch: dict, steps: int) -> float:
    """Mean seconds of a training step (forward, backward, AdamW) on ``batch``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(batch["input_ids"], cu_seqlens=batch["cu_seqlens"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                                 ignore_index=IGNORE_INDEX)  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def packing_setting(seq_len: int, mode: str, steps: int) -> dict:
    """Useful tokens/s of training steps on the stdlib corpus, packed or one document per window
    (fresh process). Every window costs the same step, so one is timed; the useful fraction is
    measured over the whole sample's windows."""
    docs = stdlib_documents()
    windows = packed(docs, seq_len) if mode == "packed" else windowed(docs, seq_len)
    useful = sum(int((w["labels"] != IGNORE_INDEX).sum()) for w in windows) / len(windows)
    seconds = step_seconds(build("lact"), windows[0], steps)
    return {"seq_len": seq_len, "mode": mode, "useful_tokens_per_s": useful / seconds,
            "padding_fraction": 1 - useful / seq_len, "s_per_step": seconds, "documents": len(docs)}


def many_documents_setting(seq_len: int, documents: int, steps: int) -> dict:
    """Step time of one row of ``documents`` equal documents vs the same tokens as one sequence."""
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (1, seq_len))
    bounds = torch.linspace(0, seq_len, documents + 1).round().int()
    model = build("lact")
    batch = {"input_ids": ids, "labels": ids, "cu_seqlens": bounds}
    return {"seq_len": seq_len, "documents": documents,
            "s_per_step_packed": step_seconds(model, batch, steps),
            "s_per_step_one_sequence": step_seconds(model, {**batch, "cu_seqlens": None}, steps)}


def cache_mib(cache) -> float:
    """MiB of every tensor an LMCache holds (KV window, pending chunk, fast weights + momentum)."""
    tensors = []
    for layer in cache:
        tensors += [layer.keys, layer.values, *(layer.pending or ())]
        if layer.fast is not None:
            tensors += [getattr(layer.fast, f.name) for f in fields(layer.fast)]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None) / 2**20


class Decoder:
    """One model decoding greedily from its own cache after a random ``context``-token prompt."""

    def __init__(self, memory: str, context: int):
        self.memory, self.model = memory, build(memory).eval()
        self.cache = self.model.new_cache()
        self.token = self.model(torch.randint(0, self.model.vocab_size, (1, context)), self.cache)[:, -1:].argmax(-1)
        self.step()  # warm-up
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def step(self) -> None:
        self.token = self.model(self.token, self.cache)[:, -1:].argmax(-1)

    def time_block(self, tokens: int) -> None:
        """Decode ``tokens`` tokens; record ms per token, wall and CPU."""
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(tokens):
            self.step()
        self.wall.append((time.perf_counter() - start) / tokens * 1e3)
        self.cpu.append((time.process_time() - cpu_start) / tokens * 1e3)


@torch.inference_mode()  # as LaCTLM.generate
def generation_setting(context: int, new_tokens: int, blocks: int = 5) -> list[dict]:
    """ms per decoded token of every memory kind after a ``context``-token prompt (fresh process).

    The models decode in alternating blocks of ``new_tokens`` tokens (LaCT, full attention, LaCT,
    …), ``blocks`` each, and each row is its median block: a slow moment of a shared machine moves
    one block of one model, not a whole row, and the two models meet the same moments.
    """
    decoders = [Decoder(memory, context) for memory in MEMORIES]
    for _ in range(blocks):
        for decoder in decoders:
            decoder.time_block(new_tokens)
    return [{"memory": d.memory, "context": context, "ms_per_token": statistics.median(d.wall),
             "cpu_ms_per_token": statistics.median(d.cpu), "blocks": blocks, "tokens_per_block": new_tokens,
             "cache_mib": cache_mib(d.cache), "threads": torch.get_num_threads()} for d in decoders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short settings only")
    parser.add_argument("--out", default="bench/results/lm.json")
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens per timed block")
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks per context (their median is reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per setting (0: torch's default)")
    parser.add_argument("--sections", default="training,generation,packing", help="comma-separated sections to run")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    seq_lens = [2048] if args.quick else [2048, 8192, 32768]
    contexts = [256, 2048] if args.quick else [512, 2048, 8192, 32768]
    if "training" in sections:
        results["training"] = [in_fresh_process(args.threads, train_setting, b, n) for n in seq_lens for b in MEMORIES]
        print_table(results["training"], ["memory", "seq_len", "s_per_step", "tokens_per_s", "peak_rss_gib"])
    if "generation" in sections:
        results["generation"] = [row for c in contexts for row in
                                 in_fresh_process(args.threads, generation_setting, c, args.new_tokens, args.blocks)]
        print_table(results["generation"], ["memory", "context", "ms_per_token", "cpu_ms_per_token", "cache_mib"])
    if "packing" in sections:
        packing_lens = [2048] if args.quick else [8192, 32768]
        rows = [in_fresh_process(args.threads, packing_setting, n, mode, 1 if n > 8192 else 2)
                for n in packing_lens for mode in ("windowed", "packed")]
        print_table(rows, ["seq_len", "mode", "useful_tokens_per_s", "padding_fraction", "s_per_step"])
        overhead = in_fresh_process(args.threads, many_documents_setting, packing_lens[-1], 300, 1)
        print_table([overhead], ["seq_len", "documents", "s_per_step_packed", "s_per_step_one_sequence"])
        results["packing"], results["packing_many_documents"] = rows, overhead
    machine = {**machine_info(), "threads": args.threads or torch.get_num_threads()}
    write_json(out, {**results, "machine": machine, "model": model_args(), "quick": args.quick})


if __name__ == "__main__":
    main()
