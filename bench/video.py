"""Video benchmark: LaCT memory vs full causal attention over all previous chunks, vs video length.

For each memory kind and length (frames): training throughput (frames/s of forward + backward at
batch 1), generation time per frame (chunk by chunk, a few Euler steps), the training activation
memory (bytes of tensors saved for backward) and the sampling state (fast weights + KV caches after
the last chunk), and the process's peak RSS (a tensor an autograd Function keeps on its ``ctx``
escapes the saved-tensor hooks; the RSS sees it). Each setting runs in a fresh process (at 256 frames the two memories need ≈ 12 GB
each, more than a 24 GiB machine holds once the allocator keeps the previous setting's heap). Writes
bench/results/video.json and prints a Markdown table.

    python -m bench.video            # 16 → 256 frames
    python -m bench.video --quick    # 16 → 64 frames, one repeat
    python -m bench.video --max-frames 128
    python -m bench.video --frames 256 --memory full_attention --repeats 1 --append   # redo one row
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.common import in_fresh_process, machine_info, median_seconds, peak_rss_gib, print_table, write_json
from lact_app.models.video import VideoDiffusionModel
from lact_app.nn import BackboneConfig, FastWeightConfig

MODEL = dict(backbone=BackboneConfig(dim=256, depth=4, heads=4), patch_size=4, chunk_frames=4,
             fast_weight=FastWeightConfig(heads=1, inter_multi=2.0))
FRAME_SIZE = (32, 32)
SAMPLING_STEPS = 4


def saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs (activation memory)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def cache_bytes(caches) -> int:
    """Bytes of the sampling state: fast weights and KV caches of every block."""
    total = 0
    for cache in caches:
        tensors = [cache.keys, cache.values] + ([] if cache.fast is None else [cache.fast.w02, cache.fast.w1])
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


def final_caches(model: VideoDiffusionModel, frames: int) -> list:
    """Caches after committing ``frames`` clean frames (what sampling holds at the end)."""
    video = torch.rand(1, frames, 3, *FRAME_SIZE)
    latents, caches = model.codec.encode(video), model.start_caches()
    with torch.no_grad():
        for i, chunk in enumerate(latents.split(model.chunk_frames, dim=1)):
            caches = model.commit_chunk(chunk, i, caches)
    return caches


def measure(memory: str, frames: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = VideoDiffusionModel(memory=memory, **MODEL)
    video = torch.rand(1, frames, 3, *FRAME_SIZE)

    def train_step():
        model.zero_grad(set_to_none=True)
        model.training_loss(video).backward()

    train_s = median_seconds(train_step, repeats=repeats, warmup=1)
    activations = saved_bytes(lambda: model.training_loss(video))
    model.eval()
    gen_s = median_seconds(lambda: model.generate(frames, frame_size=FRAME_SIZE, num_steps=SAMPLING_STEPS, seed=0),
                           repeats=repeats, warmup=0)
    return {"memory": memory, "frames": frames, "train_frames_per_s": frames / train_s,
            "gen_s_per_frame": gen_s / frames, "train_activation_mib": activations / 2**20,
            "sampling_state_mib": cache_bytes(final_caches(model, frames)) / 2**20,
            "peak_rss_gib": peak_rss_gib()}


def previous_rows(path: str) -> list[dict]:
    """Rows already in ``path`` (for ``--append``), or none."""
    return json.loads(Path(path).read_text())["rows"] if Path(path).exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 → 64 frames, one repeat")
    parser.add_argument("--max-frames", type=int, default=None, help="skip longer videos")
    parser.add_argument("--frames", type=int, nargs="+", default=None, help="these lengths only")
    parser.add_argument("--memory", nargs="+", default=["lact", "full_attention"], choices=["lact", "full_attention"])
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (default 3, quick 1)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows already in --out (a new row replaces one of the same memory and length)")
    parser.add_argument("--out", default="bench/results/video.json")
    args = parser.parse_args()
    lengths = args.frames or ([16, 32, 64] if args.quick else [16, 32, 64, 128, 256])
    lengths = [n for n in lengths if args.max_frames is None or n <= args.max_frames]
    repeats = args.repeats or (1 if args.quick else 3)
    columns = ["memory", "frames", "train_frames_per_s", "gen_s_per_frame", "train_activation_mib",
               "sampling_state_mib", "peak_rss_gib", "repeats"]
    rows = previous_rows(args.out) if args.append else []
    for frames in lengths:
        for memory in args.memory:
            row = {**in_fresh_process(0, measure, memory, frames, repeats), "repeats": repeats}
            rows = [r for r in rows if (r["memory"], r["frames"]) != (memory, frames)] + [row]
            rows.sort(key=lambda r: (r["frames"], r["memory"] != "lact"))
            print_table([row], columns)
            # Written after every row: the long settings take many minutes on a CPU.
            model = {**MODEL, **{k: MODEL[k].to_dict() for k in ("backbone", "fast_weight")}}
            write_json(args.out, {"machine": machine_info(), "model": model, "frame_size": FRAME_SIZE,
                                  "sampling_steps": SAMPLING_STEPS, "rows": rows})
    print_table(rows, columns)


if __name__ == "__main__":
    main()
