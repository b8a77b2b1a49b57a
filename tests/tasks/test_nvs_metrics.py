"""NVS metrics: PSNR per image then mean, SSIM, the offline-only LPIPS wrapper, the trivial baselines."""

import math
import warnings

import pytest
import torch

from lact_app.metrics import LPIPS, ImageMetrics, NVSBaselines, psnr
from lact_app.metrics.lpips import vgg_to_lpips_keys


def test_psnr_is_averaged_per_image():
    target = torch.zeros(2, 3, 8, 8)
    pred = torch.stack([torch.full((3, 8, 8), 0.1), torch.full((3, 8, 8), 0.01)])
    metrics = ImageMetrics()
    metrics.update(pred, target)
    out = metrics.compute()
    torch.testing.assert_close(psnr(pred, target), torch.tensor([20.0, 40.0]))
    assert out["psnr"].item() == pytest.approx(30.0)  # not the PSNR of the mean MSE (≈ 23 dB)
    assert 0 < out["ssim"].item() <= 1 and torch.isnan(out["lpips"])


def test_lpips_without_local_weights_warns_once_and_is_nan(tmp_path):
    metric = LPIPS(str(tmp_path / "missing.pth"))
    with pytest.warns(UserWarning, match="LPIPS is unavailable"):
        assert not metric.available
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not metric.available
        assert torch.isnan(metric(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))).all()


def test_lpips_with_a_random_backbone_is_a_differentiable_distance():
    metric = LPIPS("random")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    y = torch.rand(2, 3, 32, 32)
    d = metric(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(metric(y, y), torch.zeros(2))
    d.sum().backward()
    assert x.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in metric.network().parameters())


def test_lpips_loads_a_local_torchvision_vgg_file(tmp_path):
    net = LPIPS("random").network()
    state = {f"features.{k.split('.', 2)[2]}": v for k, v in net.state_dict().items() if k.startswith("net.")}
    state["classifier.0.weight"] = torch.zeros(1)  # ignored
    torch.save(state, tmp_path / "vgg16.pth")
    loaded = LPIPS(str(tmp_path / "vgg16.pth")).network()
    torch.testing.assert_close(loaded.net.slice3.get_submodule("12").weight, net.net.slice3.get_submodule("12").weight)
    assert set(vgg_to_lpips_keys(state)) == {k for k in net.state_dict() if k.startswith("net.")}


def test_image_metrics_average_lpips_over_all_images():
    lpips = LPIPS("random")
    metrics = ImageMetrics(lpips)
    batches = [(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)) for _ in range(2)]
    for pred, target in batches:
        metrics.update(pred, target)
    distances = torch.cat([lpips(pred, target) for pred, target in batches])
    assert metrics.compute()["lpips"].item() == pytest.approx(distances.mean().item(), rel=1e-5)
    metrics.reset()
    metrics.update(*batches[0])
    assert metrics.compute()["lpips"].item() == pytest.approx(distances[:2].mean().item(), rel=1e-5)


def test_baselines_white_and_mean_input_psnr():
    """Scene 0: white targets, inputs 0.2 and 0.6 (mean 0.4). Scene 1: targets 0.5 and 0.4, inputs
    0.4 and 0.4. White: ∞ on scene 0; 20·log10(1/0.5) and 20·log10(1/0.6) on scene 1.
    Mean input: 20·log10(1/0.6) twice on scene 0; 20·log10(1/0.1) and ∞ on scene 1."""
    full = lambda *values: torch.stack([torch.full((3, 4, 4), v) for v in values])  # noqa: E731
    inputs = torch.stack([full(0.2, 0.6), full(0.4, 0.4)])
    targets = torch.stack([full(1.0, 1.0), full(0.5, 0.4)])
    baselines = NVSBaselines()
    baselines.update(inputs, targets)
    out = baselines.compute()
    assert set(out) == {"white_psnr", "mean_input_psnr"}
    assert out["white_psnr"].item() == float("inf")  # an all-white target is rendered exactly
    db = lambda err: 20 * math.log10(1 / err)  # noqa: E731
    # finite cases: the mean over the images of each image's PSNR
    finite = NVSBaselines()
    finite.update(inputs[1:], targets[1:])
    out = finite.compute()
    assert out["white_psnr"].item() == pytest.approx((db(0.5) + db(0.6)) / 2, rel=1e-5)
    finite.reset()
    finite.update(inputs[:1], targets[:1])
    assert finite.compute()["mean_input_psnr"].item() == pytest.approx(db(0.6), rel=1e-5)
    # the same PSNR average as ImageMetrics' test/psnr, over two batches (what a test epoch sees)
    torch.manual_seed(0)
    inputs, targets = torch.rand(2, 3, 3, 8, 8), torch.rand(2, 2, 3, 8, 8)
    baselines, reference = NVSBaselines(), ImageMetrics()
    for i in range(2):
        baselines.update(inputs[i : i + 1], targets[i : i + 1])
        reference.update(inputs[i : i + 1].mean(1, keepdim=True).expand(1, 2, 3, 8, 8).flatten(0, 1),
                         targets[i : i + 1].flatten(0, 1))
    torch.testing.assert_close(baselines.compute()["mean_input_psnr"], reference.compute()["psnr"])
