"""Image-quality metrics: PSNR per image, SSIM, and an offline-only LPIPS (DESIGN.md §7)."""

from .image import ImageMetrics, NVSBaselines, psnr
from .lpips import LPIPS, VGG16_HUB_FILE

__all__ = ["LPIPS", "VGG16_HUB_FILE", "ImageMetrics", "NVSBaselines", "psnr"]
