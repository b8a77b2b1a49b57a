"""NVS benchmark: training and rendering views/s and peak memory vs the number of input views,
LaCT vs the same model with full attention over all views in place of the LaCT layer.

    python -m bench.nvs [--quick] [--max-views N] [--device cpu|cuda] [--out bench/results/nvs.json]

Per setting (64×64 views, patch 8 → 64 tokens per view, batch 1): one training step (forward +
backward) with V_in input and 4 target views, and inference = ``reconstruct`` of the V_in input
views then ``render`` of 16 target views. LaCT's cost grows linearly with V_in (one fast-weight
update over the input tokens, then per-token applies), full attention's quadratically. Peak
memory: CUDA max allocated, or on CPU the peak RSS of a fresh process per setting (so settings do
not see each other's peaks).
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import in_fresh_process, machine_info, median_seconds, peak_rss_gib, print_table, write_json
from lact_app.models.cameras import look_at
from lact_app.models.nvs import NVSModel
from lact_app.nn import BackboneConfig

SIZE, TRAIN_TARGETS, RENDER_TARGETS = 64, 4, 16


def cameras(views: int, device: str):
    pos = torch.nn.functional.normalize(torch.randn(views, 3), dim=-1) * 2.7
    c2w = look_at(pos, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])).unsqueeze(0).to(device)
    return torch.tensor([68.6, 68.6, 32.0, 32.0], device=device).expand(1, views, 4), c2w


def measure(memory: str, views: int, dim: int, depth: int, device: str, repeats: int) -> dict:
    """Times one setting in this process; returns views/s and peak memory (GiB)."""
    torch.manual_seed(0)
    backbone = BackboneConfig(dim=dim, depth=depth, heads=max(1, dim // 64), rope_theta=None)
    model = NVSModel(patch_size=8, backbone=backbone, memory=memory).to(device)
    images = torch.rand(1, views, 3, SIZE, SIZE, device=device)
    k_in, c_in = cameras(views, device)
    k_t, c_t = cameras(RENDER_TARGETS, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train_step():
        model(images, k_in, c_in, k_t[:, :TRAIN_TARGETS], c_t[:, :TRAIN_TARGETS]).mean().backward()
        sync()

    @torch.no_grad()
    def render():
        model.render(model.reconstruct(images, k_in, c_in), k_t, c_t, (SIZE, SIZE), chunk_views=8)
        sync()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_s = median_seconds(train_step, repeats)
    render_s = median_seconds(render, repeats)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = peak_rss_gib()
    return {"memory": memory, "input_views": views, "tokens": views * (SIZE // 8) ** 2,
            "train_views_per_s": (views + TRAIN_TARGETS) / train_s,
            "render_views_per_s": RENDER_TARGETS / render_s, "peak_mem_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4–16 input views, a small model, 1 repeat")
    parser.add_argument("--max-views", type=int, default=None, help="skip settings with more input views")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per CPU setting (0: torch's default)")
    parser.add_argument("--out", default="bench/results/nvs.json")
    args = parser.parse_args()
    views = [4, 8, 16] if args.quick else [4, 8, 16, 32, 64]
    views = [v for v in views if args.max_views is None or v <= args.max_views]
    dim, depth, repeats = (64, 2, 1) if args.quick else (256, 4, 3)
    columns = ["memory", "input_views", "tokens", "train_views_per_s", "render_views_per_s", "peak_mem_gib"]
    rows = []
    for v in views:
        for memory in ("lact", "full_attention"):
            setting = (memory, v, dim, depth, args.device, repeats)
            start = time.perf_counter()
            rows.append(measure(*setting) if args.device == "cuda" else in_fresh_process(args.threads, measure, *setting))
            print(f"{memory:14s} {v:3d} views: {time.perf_counter() - start:.1f}s", flush=True)
            # Written after every row, so an interrupted run keeps what it measured.
            machine = {**machine_info(), "device": args.device, "threads": args.threads or torch.get_num_threads()}
            write_json(args.out, {"machine": machine,
                                  "model": {"dim": dim, "depth": depth, "patch": 8, "image": SIZE},
                                  "train_targets": TRAIN_TARGETS, "render_targets": RENDER_TARGETS,
                                  "quick": args.quick, "rows": rows})
    print_table(rows, columns)

if __name__ == "__main__":
    main()
