"""LPIPS (VGG) from local weights only: the torch hub cache or a given file, never a download.

``lpips.LPIPS`` would ask torchvision for ImageNet VGG weights (a download) unless built with
``pnet_rand=True``. This wrapper builds the network on the meta device (no random VGG classifier
is allocated), takes the linear-layer weights from the files shipped inside the ``lpips`` package
and the VGG16 backbone from a local torchvision state dict. Without one it warns once and reports
NaN, so training falls back to MSE only.

The wrapper is a plain object, not an ``nn.Module``: held by a LightningModule it stays out of
checkpoints, optimizers, DDP and FSDP.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

#: torchvision's VGG16 ImageNet weights, looked up in ``torch.hub.get_dir()/checkpoints``.
VGG16_HUB_FILE = "vgg16-397923af.pth"

#: VGG16 ``features`` index where each of LPIPS's five slices starts.
SLICE_STARTS = (0, 4, 9, 16, 23, 30)

_warned: set[str] = set()


def hub_vgg16_path() -> Path:
    """Where ``torchvision.models.vgg16(weights="DEFAULT")`` would cache its weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_HUB_FILE


def vgg_to_lpips_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision VGG16 keys (``features.{i}.weight`` or ``{i}.weight``) -> ``net.slice{k}.{i}.weight``."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features":
            parts = parts[1:]
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= SLICE_STARTS[-1]:
            continue  # the classifier, and layers LPIPS does not use
        index = int(parts[0])
        k = next(s for s in range(5) if SLICE_STARTS[s] <= index < SLICE_STARTS[s + 1]) + 1
        out[f"net.slice{k}.{index}.{parts[1]}"] = value
    return out


def random_backbone(net: nn.Module) -> dict[str, torch.Tensor]:
    """Kaiming-normal conv weights and zero biases for every backbone parameter of ``net`` (tests)."""
    out = {}
    for name, p in net.named_parameters():
        if name.startswith("net."):
            t = torch.empty(p.shape)
            out[name] = nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu") if t.dim() > 1 else t.zero_()
    return out


class LPIPS:
    """Per-image LPIPS distance (VGG, v0.1) of images in [0, 1] (``normalize=True``, as NVS papers report).

    Args:
        weights: a torchvision VGG16 state dict file; None: the torch hub cache's
            ``vgg16-397923af.pth``; ``"random"``: a random backbone (tests only: the values mean
            nothing).
    """

    def __init__(self, weights: str | None = None):
        self.weights = weights
        self._net: nn.Module | None = None

    @property
    def source(self) -> Path | None:
        """The backbone file that would be used (None for ``"random"``)."""
        if self.weights == "random":
            return None
        return Path(os.path.expanduser(self.weights)) if self.weights else hub_vgg16_path()

    @property
    def available(self) -> bool:
        """Whether LPIPS can be computed; warns once per missing file when it cannot."""
        source = self.source
        if source is None or source.is_file():
            return True
        if str(source) not in _warned:
            _warned.add(str(source))
            warnings.warn(
                f"LPIPS is unavailable: no VGG16 weights at {source}. It is reported as NaN and "
                "left out of the loss. Put torchvision's vgg16-397923af.pth there (or pass its "
                "path) to enable it; nothing is downloaded.",
                stacklevel=2,
            )
        return False

    def network(self) -> nn.Module:
        """The LPIPS network (built on first use; frozen, eval mode)."""
        if self._net is None:
            self._net = self._build()
        return self._net

    def _build(self) -> nn.Module:
        import lpips  # imports torchvision: slow, so only when LPIPS is used

        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained is deprecated"
            net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        package = Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
        state = torch.load(package, map_location="cpu", weights_only=True)
        source = self.source
        backbone = random_backbone(net) if source is None else vgg_to_lpips_keys(
            torch.load(source, map_location="cpu", weights_only=True))
        state.update(backbone)
        state.update({k: v for k, v in net.state_dict().items() if k.startswith("scaling_layer")})
        net.load_state_dict(state, strict=False, assign=True)  # lins.K alias linK
        left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"LPIPS weights missing for {left}")
        return net.eval().requires_grad_(False)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: [N, 3, H, W] in [0, 1] -> [N] (NaN when unavailable). Differentiable in pred."""
        if not self.available:
            return torch.full((pred.size(0),), float("nan"), device=pred.device)
        net = self.network()
        if next(net.parameters()).device != pred.device:
            net.to(pred.device)
        return net(pred, target, normalize=True).flatten()
