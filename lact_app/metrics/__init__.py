"""Image-quality metrics: PSNR per image, SSIM, and an offline-only LPIPS (DESIGN.md §7)."""

from .image import ImageMetrics, psnr
from .lpips import LPIPS, VGG16_HUB_FILE

__all__ = ["LPIPS", "VGG16_HUB_FILE", "ImageMetrics", "psnr"]
