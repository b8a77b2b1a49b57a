"""Video decoding/encoding, the procedural clips, `prepare video` on the real files, VideoDataModule."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from datamodules.prepare import main as prepare_main
from datamodules.prepare.writer import ShardSink
from datamodules.procedural_clips import procedural_samples, render_clip
from datamodules.video import VideoDataModule, cover_resize_crop
from datamodules.video_io import VideoBytes, decord, probe
from lact_app.media import encode_mp4

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "video"  # ../shared/data/video
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/video is absent")
needs_decord = pytest.mark.skipif(decord is None, reason="decord is not installed")


def smooth_frames(n=12, size=16):
    y, x = np.mgrid[0:size, 0:size]
    return [np.stack([(x * 8 + 10 * t) % 256, y * 8, np.full_like(x, 128)], -1).astype(np.uint8) for t in range(n)]


@pytest.mark.parametrize("backend", ["pyav", pytest.param("decord", marks=needs_decord)])
def test_encode_decode_roundtrip(backend):
    frames = smooth_frames(size=32)  # decord 0.6 cannot read some tiny sizes (VideoBytes falls back)
    data = encode_mp4(frames, fps=8, crf=10)
    info = probe(data)
    assert (info["codec"], info["pix_fmt"], info["width"]) == ("h264", "yuv420p", 32)
    reader = VideoBytes(data, backend)
    got = reader.get([0, 5, 11])
    assert len(reader) == 12 and got.shape == (3, 32, 32, 3) and reader.backend == backend
    assert np.abs(got.astype(float) - np.stack([frames[i] for i in (0, 5, 11)])).mean() < 6


@needs_real
@needs_decord
def test_rotation_applied_by_both_backends():
    data = (REAL / "tiny" / "video_90.mov").read_bytes()
    via_decord, via_pyav = VideoBytes(data, "decord").get([0]), VideoBytes(data, "pyav").get([0])
    assert via_decord.shape == via_pyav.shape == (1, 568, 320, 3)  # portrait: 320 wide, 568 high
    assert np.abs(via_decord.astype(float) - via_pyav).mean() < 2
    assert probe(data)["rotation"] % 360 != 0


def test_procedural_clips_deterministic_and_moving():
    a, label = render_clip(np.random.default_rng(5), 8, 32)
    b, _ = render_clip(np.random.default_rng(5), 8, 32)
    assert np.array_equal(a, b) and a.shape == (8, 32, 32, 3) and 0 <= label < 3
    assert np.abs(a[1:].astype(int) - a[:-1]).mean() > 0.1  # something moves
    sample = next(procedural_samples(1, seed=0, num_frames=8))
    assert set(sample) == {"__key__", "mp4", "cls", "json"} and len(VideoBytes(sample["mp4"])) == 8


@needs_real
def test_prepare_every_real_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "shards"
    code = prepare_main(["video", str(REAL), str(bad), "--out", str(out), "--split", "val", "--max-size", "64"])
    assert code == 0
    samples = {json.loads(s["json"])["source"].rsplit("/", 1)[-1]: s
               for s in wds.WebDataset(str(out / "val-000000.tar"), shardshuffle=False)}
    assert set(samples) == {"squirrel_no_audio.mp4", "flipping_a_pancake.mkv", "realshort.mp4",
                            "video_0.mov", "video_90.mov"}
    for name, sample in samples.items():
        meta, info = json.loads(sample["json"]), probe(sample["mp4"])
        assert (info["codec"], info["pix_fmt"], info["rotation"]) == ("h264", "yuv420p", 0.0), name
        assert max(meta["width"], meta["height"]) <= 64 and meta["frames"] >= 3 and meta["fps"] <= 30.3
    portrait, landscape = json.loads(samples["video_90.mov"]["json"]), json.loads(samples["video_0.mov"]["json"])
    assert portrait["height"] > portrait["width"] and landscape["width"] > landscape["height"]
    assert json.loads(samples["flipping_a_pancake.mkv"]["json"])["frames"] == 310  # mkv re-encoded, no loss


def test_prepare_keeps_compliant_files_as_they_are(tmp_path):
    src = tmp_path / "ok.mp4"
    src.write_bytes(encode_mp4(smooth_frames(), fps=8))
    assert prepare_main(["video", str(src), "--out", str(tmp_path / "o")]) == 0
    sample = next(iter(wds.WebDataset(str(tmp_path / "o" / "train-000000.tar"), shardshuffle=False)))
    assert sample["mp4"] == src.read_bytes() and not json.loads(sample["json"])["reencoded"]


def test_cover_resize_crop():
    video = torch.rand(2, 3, 20, 40)
    assert cover_resize_crop(video, (16, 16), random_crop=False).shape == (2, 3, 16, 16)
    assert cover_resize_crop(video, (10, 30), random_crop=True).shape == (2, 3, 10, 30)


def write_clips(root: Path, lengths, size=24):
    with ShardSink(root, "train", maxcount=100) as sink:
        for i, n in enumerate(lengths):
            frames = [np.roll(f, i, axis=1) for f in smooth_frames(n, size)]
            sink.write({"__key__": f"c{i}", "mp4": encode_mp4(frames, 8, crf=10), "cls": str(i % 3)})


def test_datamodule_clips_crops_and_bad_samples(tmp_path):
    write_clips(tmp_path, [12, 12, 3])  # the 3-frame clip is too short for 8 frames
    dm = VideoDataModule(train_shards=str(tmp_path), val_shards=str(tmp_path), num_frames=8, image_size=16,
                         batch_size=2, samples_per_epoch=4, shuffle_buffer=0, cond_key="cls")
    dm.setup("fit")
    val = list(dm.val_dataloader())
    assert len(val) == 1 and val[0]["video"].shape == (2, 8, 3, 16, 16) and val[0]["cond"].tolist() == [0, 1]
    assert dm.skipped_samples == 1
    again = list(dm.val_dataloader())[0]["video"]
    assert torch.equal(val[0]["video"], again)  # evaluation is deterministic
    torch.manual_seed(0)
    train = next(iter(dm.train_dataloader()))
    assert train["video"].shape == (2, 8, 3, 16, 16) and 0 <= train["video"].min() and train["video"].max() <= 1
    with pytest.raises(ValueError, match="context_frames"):
        VideoDataModule(num_frames=4, context_frames=8)
