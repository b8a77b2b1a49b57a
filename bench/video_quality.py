"""Video sample quality of a trained checkpoint, loaded alone (no Trainer), on the validation split.

    python -m bench.video_quality CKPT [--config configs/video.yaml] [--out bench/results/video_quality.json]
        [--strip bench/results/video_strip.png] [--clips N]

With ``generate()``'s defaults (EMA weights, the task's sampling steps and shift) and the config's
``context_frames`` it measures, on every validation clip:
- continuation PSNR/SSIM of the future frames, next to the copy-last / mean-context baselines;
- unconditional samples (as many as clips): high-frequency and motion energy relative to the real
  clips' (``tasks.video_metrics.SampleStatistics``; ≈ 1 when samples look like the data);
and writes them as JSON, plus a strip PNG: per clip a row of real frames, a row of its continuation
(context frames, then generated), then rows of unconditional samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from bench.common import machine_info, write_json
from datamodules.video import VideoDataModule
from tasks.video import EVAL_SEED, VideoTask
from tasks.video_metrics import BASELINES, ContinuationCurve, SampleStatistics, baseline_continuations

STRIP_CLIPS = 3


def validation_clips(config: Path) -> tuple[torch.Tensor, int]:
    """All validation clips of the config's datamodule.  -> ([N, F, 3, H, W], context_frames)."""
    data = VideoDataModule(**(yaml.safe_load(config.read_text())["data"].get("init_args") or {}))
    data.setup("validate")
    return torch.cat([batch["video"] for batch in data.val_dataloader()]), data.context_frames


@torch.no_grad()
def measure(
    task: VideoTask, clips: torch.Tensor, context_frames: int, batch_size: int = 16
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Continuation and sample statistics over ``clips`` [N, F, 3, H, W].

    Returns:
        (JSON-ready scores, continued clips [N, F, 3, H, W], unconditional samples [N, F, 3, H, W]).
    """
    future = clips.size(1) - context_frames
    curves = {name: ContinuationCurve(frames=future) for name in ("model", *BASELINES)}
    stats, continued, samples = SampleStatistics(), [], []
    for i, video in enumerate(clips.split(batch_size)):
        generated = task.generate(video.size(1), context=video[:, :context_frames], seed=EVAL_SEED + i)
        curves["model"].update(generated[:, context_frames:], video[:, context_frames:])
        for name, frames in baseline_continuations(video[:, :context_frames], future).items():
            curves[name].update(frames, video[:, context_frames:])
        sampled = task.generate(video.size(1), video.size(0), seed=EVAL_SEED + 1000 + i)
        stats.update(video, real=True)
        stats.update(sampled, real=False)
        continued.append(generated)
        samples.append(sampled)
    scores = {name: curve.compute() for name, curve in curves.items()}
    result = {"clips": clips.size(0), "context_frames": context_frames,
              "continuation_psnr": scores["model"]["psnr"], "continuation_ssim": scores["model"]["ssim"],
              **{f"baseline/{name}_psnr": scores[name]["psnr"] for name in BASELINES},
              **{f"baseline/{name}_ssim": scores[name]["ssim"] for name in BASELINES},
              "continuation_psnr_per_frame": scores["model"]["psnr_per_frame"],
              **{f"sample_{name}": value for name, value in stats.compute().items()}}
    return result, torch.cat(continued), torch.cat(samples)


def strip(rows: list[torch.Tensor], path: Path) -> None:
    """Rows of clips [T, 3, H, W] in [0, 1], frames side by side, written as one PNG."""
    image = torch.cat([torch.cat(list(row), dim=-1) for row in rows], dim=-2)
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--config", type=Path, default=Path("configs/video.yaml"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/video_quality.json"))
    parser.add_argument("--strip", type=Path, default=Path("bench/results/video_strip.png"))
    parser.add_argument("--clips", type=int, default=None, help="the first N validation clips (default: all)")
    args = parser.parse_args()
    task = VideoTask.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    clips, context_frames = validation_clips(args.config)
    clips = clips[: args.clips]
    result, continued, samples = measure(task, clips, context_frames)
    rows = [row for i in range(STRIP_CLIPS) for row in (clips[i], continued[i])] + list(samples[:STRIP_CLIPS])
    strip(rows, args.strip)
    write_json(args.out, {"checkpoint": str(args.checkpoint), "machine": machine_info(), **result})
    print({k: v for k, v in result.items() if not k.endswith("per_frame")})


if __name__ == "__main__":
    main()
