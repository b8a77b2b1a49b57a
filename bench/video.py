"""Video benchmark: LaCT memory vs full causal attention over all previous chunks, vs video length.

For each memory kind and length (frames): training throughput (frames/s of forward + backward at
batch 1), generation time per frame (chunk by chunk, a few Euler steps), the training activation
memory (bytes of tensors saved for backward) and the sampling state (fast weights + KV caches after
the last chunk). Writes bench/results/video.json and prints a Markdown table.

    python -m bench.video            # 16 → 256 frames
    python -m bench.video --quick    # 16 → 64 frames, one repeat
    python -m bench.video --max-frames 128
"""

from __future__ import annotations

import argparse

import torch

from bench.common import machine_info, median_seconds, print_table, write_json
from lact_app.models.video import VideoDiffusionModel

MODEL = dict(dim=256, depth=4, num_heads=4, patch_size=4, chunk_frames=4, fw_heads=1, fw_inter_multi=2.0)
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
        tensors = [cache.k, cache.v] + ([] if cache.state is None else [cache.state.w02, cache.state.w1])
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
            "sampling_state_mib": cache_bytes(final_caches(model, frames)) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 → 64 frames, one repeat")
    parser.add_argument("--max-frames", type=int, default=None, help="skip longer videos")
    parser.add_argument("--out", default="bench/results/video.json")
    args = parser.parse_args()
    lengths = [16, 32, 64] if args.quick else [16, 32, 64, 128, 256]
    lengths = [n for n in lengths if args.max_frames is None or n <= args.max_frames]
    repeats = 1 if args.quick else 3
    columns = ["memory", "frames", "train_frames_per_s", "gen_s_per_frame", "train_activation_mib",
               "sampling_state_mib"]
    rows = []
    for frames in lengths:
        for memory in ("lact", "full_attention"):
            rows.append(measure(memory, frames, repeats))
            print_table(rows[-1:], columns)
            # Written after every row: the long settings take many minutes on a CPU.
            write_json(args.out, {"machine": machine_info(), "model": MODEL, "frame_size": FRAME_SIZE,
                                  "sampling_steps": SAMPLING_STEPS, "quick": args.quick, "rows": rows})
    print_table(rows, columns)

if __name__ == "__main__":
    main()
