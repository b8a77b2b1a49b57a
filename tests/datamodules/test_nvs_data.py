"""NVS data: prepare (opencv_cameras.json and transforms.json), shard format, view sampling, resize."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules.nvs import (
    NVSDataModule,
    SceneDecoder,
    check_scene,
    cover_resize,
    frame_from_c2w,
    load_rgb,
)
from datamodules.prepare import main as prepare_main
from datamodules.procedural_scenes import procedural_scene
from lact_app.models.cameras import opencv_to_opengl, plucker_rays

SIZE, VIEWS = 32, 6


@pytest.fixture(scope="module")
def raw_scene():
    """A procedural scene: RGBA images (transparent background), intrinsics and OpenCV c2w."""
    images, intrinsics, c2w = procedural_scene(seed=3, num_views=VIEWS, size=SIZE)
    alpha = np.where((images == 255).all(-1), 0, 255).astype(np.uint8)
    return np.concatenate([images, alpha[..., None]], -1), intrinsics, c2w


def write_opencv_scene(root: Path, raw_scene) -> Path:
    images, intrinsics, c2w = raw_scene
    (root / "renderings").mkdir(parents=True)
    frames = []
    for i, (image, (fx, fy, cx, cy), pose) in enumerate(zip(images, intrinsics, c2w)):
        Image.fromarray(image, "RGBA").save(root / "renderings" / f"{i:08d}_rgba.png")
        frames.append({"w": SIZE, "h": SIZE, "fx": fx, "fy": fy, "cx": cx, "cy": cy,
                       "w2c": np.linalg.inv(pose).tolist(), "file_path": f"renderings/{i:08d}_rgba.png"})
    (root / "opencv_cameras.json").write_text(json.dumps(frames))
    return root


def write_nerf_scene(root: Path, raw_scene, missing: int) -> Path:
    """The same cameras as transforms.json (OpenGL axes, camera_angle_x, no file extensions)."""
    images, intrinsics, c2w = raw_scene
    (root / "train").mkdir(parents=True)
    gl = opencv_to_opengl(torch.from_numpy(c2w)).numpy()
    frames = []
    for i, (image, pose) in enumerate(zip(images, gl)):
        if i != missing:
            Image.fromarray(image, "RGBA").save(root / "train" / f"r_{i}.png")
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": pose.tolist()})
    fov = 2 * math.atan(0.5 * SIZE / intrinsics[0, 0])
    (root / "transforms.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    return root


def read_samples(out: Path) -> list[dict]:
    return list(wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False, empty_check=False))


def eval_decoder(inputs: int, targets: int, split: str = "test") -> SceneDecoder:
    return SceneDecoder(split, (SIZE, SIZE), num_inputs=inputs, num_targets=targets, normalize=False, seed=0,
                        camera_path="turntable", path_frames=5)


def test_transforms_json_and_opencv_cameras_give_identical_rays(tmp_path, raw_scene, capsys):
    write_opencv_scene(tmp_path / "cv" / "duck", raw_scene)
    write_nerf_scene(tmp_path / "nerf" / "duck", raw_scene, missing=2)
    assert prepare_main(["nvs", str(tmp_path / "cv"), "--out", str(tmp_path / "out_cv")]) == 0
    assert prepare_main(["nvs", str(tmp_path / "nerf"), "--out", str(tmp_path / "out_nerf"),
                         "--split", "test"]) == 0
    assert "1 × missing image" in capsys.readouterr().out
    (cv,), (nerf,) = read_samples(tmp_path / "out_cv"), read_samples(tmp_path / "out_nerf")
    assert (tmp_path / "out_nerf" / "test-000000.tar").is_file()
    assert check_scene(cv) is None and check_scene(nerf) is None
    assert len(json.loads(cv["cameras.json"])["frames"]) == VIEWS
    assert len(json.loads(nerf["cameras.json"])["frames"]) == VIEWS - 1
    kept = [i for i in range(VIEWS) if i != 2]
    views_cv = eval_decoder(VIEWS - 1, 1).load_views(cv, json.loads(cv["cameras.json"])["frames"], kept)
    views_nerf = eval_decoder(VIEWS - 1, 1).load_views(nerf, json.loads(nerf["cameras.json"])["frames"],
                                                       list(range(VIEWS - 1)))
    rays_cv = plucker_rays(views_cv[1].float(), views_cv[2].float(), SIZE, SIZE)
    rays_nerf = plucker_rays(views_nerf[1].float(), views_nerf[2].float(), SIZE, SIZE)
    torch.testing.assert_close(rays_nerf, rays_cv, atol=1e-5, rtol=0)
    torch.testing.assert_close(views_nerf[0], views_cv[0])


def test_a_bad_camera_drops_only_its_view(tmp_path, raw_scene, capsys):
    """One camera without ``w2c`` and one with a malformed ``w2c``: the scene keeps its other views."""
    scene = write_opencv_scene(tmp_path / "cv" / "duck", raw_scene)
    frames = json.loads((scene / "opencv_cameras.json").read_text())
    del frames[1]["w2c"]
    frames[4]["w2c"] = [[1.0, 0.0], [0.0, 1.0]]
    (scene / "opencv_cameras.json").write_text(json.dumps(frames))
    assert prepare_main(["nvs", str(tmp_path / "cv"), "--out", str(tmp_path / "out")]) == 0
    assert "1 × view without camera field, 1 × unreadable view" in capsys.readouterr().out
    (sample,) = read_samples(tmp_path / "out")
    assert check_scene(sample) is None
    kept = json.loads(sample["cameras.json"])["frames"]
    expected = [frame_from_c2w(raw_scene[2][i], raw_scene[1][i], SIZE, SIZE) for i in (0, 2, 3, 5)]
    assert len(kept) == VIEWS - 2
    for frame, want in zip(kept, expected):
        np.testing.assert_allclose(frame["w2c"], want["w2c"], atol=1e-6)


def test_rgba_is_composited_on_white(raw_scene):
    image = Image.fromarray(raw_scene[0][0], "RGBA")
    image.putpixel((0, 0), (10, 20, 30, 0))
    buf = __import__("io").BytesIO()
    image.save(buf, format="PNG")
    assert load_rgb(buf.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_target_views_and_resize_at_prepare(tmp_path, raw_scene):
    write_opencv_scene(tmp_path / "scene", raw_scene)
    out = tmp_path / "out"
    assert prepare_main(["nvs", str(tmp_path / "scene"), "--out", str(out), "--target-views", "every:3",
                         "--resize", "16"]) == 0
    (sample,) = read_samples(out)
    meta = json.loads(sample["cameras.json"])
    assert meta["target_views"] == [0, 3]
    assert (meta["frames"][0]["w"], meta["frames"][0]["fx"]) == (16, pytest.approx(raw_scene[1][0, 0] / 2))
    decoder = eval_decoder(2, 2)
    for _ in range(3):  # evaluation: targets from the target-only views, the same split every time
        inputs, targets = decoder.choose_views(sample["__key__"], VIEWS, meta["target_views"])
        assert targets == [0, 3] and not set(inputs) & {0, 3}
        assert (inputs, targets) == decoder.choose_views(sample["__key__"], VIEWS, meta["target_views"])
    train = eval_decoder(2, 2, split="train")
    for _ in range(10):  # training never sees the target-only views
        inputs, targets = train.choose_views("k", VIEWS, [0, 3])
        assert not set(inputs + targets) & {0, 3} and not set(inputs) & set(targets)


def test_cover_resize_keeps_rays_on_the_same_scene_points():
    image = Image.new("RGB", (40, 20))
    k = np.array([30.0, 30.0, 20.0, 10.0])
    out, k2 = cover_resize(image, k, (16, 16))
    assert out.size == (16, 16)
    # scale 0.8 -> 32×16, crop 8 px on the left
    np.testing.assert_allclose(k2, [24.0, 24.0, 8.0, 8.0])


def test_bad_cameras_are_reported():
    assert "orthonormal" in check_scene({"cameras.json": json.dumps({"frames": [
        {"w": 1, "h": 1, "fx": 1, "fy": 1, "cx": 0, "cy": 0, "w2c": (2 * np.eye(4)).tolist()}]}), "0000.png": b""})
    assert "lacks" in check_scene({"cameras.json": json.dumps({"frames": [{"w": 1}]})})
    assert "bad cameras.json" in check_scene({"cameras.json": b"{"})


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    dm = NVSDataModule(image_size=[24, 32], num_input_views=3, num_target_views=2, eval_num_target_views=4,
                       batch_size=2, samples_per_epoch=4, default_scenes=4,
                       cache_dir=str(tmp_path_factory.mktemp("nvs-cache")))
    dm.setup("fit")
    dm.setup("predict")
    return dm


def test_embedded_default_is_built_once_and_batches_have_the_documented_shapes(datamodule):
    root = datamodule.default_dataset_root()
    assert sorted(p.name for p in root.glob("*.tar")) == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["input_images"].shape == (2, 3, 3, 24, 32)
    assert batch["target_images"].shape == (2, 2, 3, 24, 32)
    assert batch["input_intrinsics"].shape == (2, 3, 4) and batch["target_c2w"].shape == (2, 2, 4, 4)
    assert 0 <= batch["input_images"].min() and batch["input_images"].max() <= 1
    # cover resize from 64×64: scale 0.5, crop 4 rows
    torch.testing.assert_close(batch["input_intrinsics"][0, 0, 2:], torch.tensor([16.0, 12.0]))


def test_predict_batches_carry_a_camera_path(datamodule):
    batch = next(iter(datamodule.predict_dataloader()))
    assert batch["target_images"].shape[1] == 4
    assert batch["path_c2w"].shape == (2, 48, 4, 4) and batch["path_intrinsics"].shape == (2, 48, 4)
    first = next(iter(datamodule.predict_dataloader()))
    torch.testing.assert_close(first["input_c2w"], batch["input_c2w"])  # deterministic split


def test_procedural_scenes_are_deterministic_and_not_blank():
    a, _, c2w = procedural_scene(seed=7, num_views=3, size=16)
    b, _, _ = procedural_scene(seed=7, num_views=3, size=16)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == (3, 16, 16, 3)
    assert (a < 250).any(-1).mean() > 0.02  # objects are visible
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=-1), 2.7)
    z = c2w[:, :3, 2]  # cameras look at the origin
    np.testing.assert_allclose((z * -c2w[:, :3, 3] / 2.7).sum(-1), 1.0, atol=1e-6)
