"""The inspection network and its input convention, shared by training and export.

What it does: `InspectionNet` = truncated EfficientNet-Lite0 backbone + a classification head
(good + defect classes) + a light per-pixel defect-map head at 1/8 resolution. `preprocess` turns
Mono8 camera frames into the normalized 3-channel tensor the network (and the ONNX model) takes.

What it does not: training, calibration or file I/O (see train.py and export.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.efficientnet_lite import EfficientNetLite0Features

INPUT_SIZE = 128  # square network input (pixels); the synthetic ROI is exactly this size
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
MAP_STRIDE = 8  # defect_map is INPUT_SIZE / 8 on a side

# Why cut after block 10 (end of stage 5, stride 16, 112 channels): defects are local, a few to a few
# tens of pixels, and stage-5 features already see ~100 px around each cell of a 128 px input. Stages
# 6-7 would reduce the image to 4x4 cells, hold ~75% of the parameters (18 MB -> 2.8 MB without them)
# and mostly encode ImageNet object semantics that do not transfer to surface defects.
LAST_BLOCK = 10
MAP_TAP = 4  # end of stage 3, stride 8: fine enough to localise a 1-2 px scratch to an 8 px cell
LAST_FROZEN_BLOCK = 2  # stem + blocks 0..2 keep their ImageNet weights (generic edges; saves ~1/3 of CPU time)


class InspectionNet(nn.Module):
    """Input: (N, 3, 128, 128) normalized. Output: (class logits (N, C), defect logits (N, 1, 16, 16))."""

    def __init__(self, num_classes: int, pretrained: bool = True) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0Features(last_block=LAST_BLOCK, taps=(MAP_TAP, LAST_BLOCK))
        if pretrained:
            self.backbone.load_pretrained()
        c8, c16 = self.backbone.tap_channels
        self.map_fine = nn.Conv2d(c8, 32, 1)
        self.map_coarse = nn.Conv2d(c16, 32, 1)
        self.map_out = nn.Conv2d(32, 1, 3, padding=1)
        # Max pooling alongside the average: a small defect barely moves the mean of 64 cells.
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * c16 + 1, num_classes))
        # Backbone activations reach tens; with default init the new heads start with huge logits
        # (initial loss ~4 instead of log C). Zero output layers start them at "no opinion".
        for layer in (self.classifier[1], self.map_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def frozen_modules(self) -> list[nn.Module]:
        return self.backbone.layers_through(LAST_FROZEN_BLOCK)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8, f16 = self.backbone(x)
        coarse = F.interpolate(self.map_coarse(f16), scale_factor=2.0, mode="nearest")
        defect_logits = self.map_out(F.relu(self.map_fine(f8) + coarse))
        # The strongest defect-map response is fed to the classifier, so the mask supervision helps
        # the decision directly and not only as an auxiliary signal (as a probability: raw logits are
        # unbounded and destabilise the first epochs).
        peak = torch.sigmoid(defect_logits.amax(dim=(1, 2, 3)))[:, None]
        pooled = torch.cat([f16.mean(dim=(2, 3)), f16.amax(dim=(2, 3)), peak], dim=1)
        return self.classifier(pooled), defect_logits


def crop_resize(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Cut the ROI (x, y, w, h) out of a Mono8 image and bring it to INPUT_SIZE squared (uint8)."""
    if roi is not None:
        x, y, w, h = roi
        image = image[y : y + h, x : x + w]
    if image.shape != (INPUT_SIZE, INPUT_SIZE):
        image = np.asarray(Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR))
    return image


def normalize(gray: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) grey levels scaled to 0..1 -> (N, 3, H, W) float32 with ImageNet mean/std per channel
    (the grey image is replicated to the three channels the pretrained stem expects)."""
    g = torch.as_tensor(gray, dtype=torch.float32)[:, None]
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (g - mean) / std


def preprocess(frames: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Mono8 frames (N, H, W) -> float32 (N, 3, 128, 128), exactly what the ONNX input `image` wants."""
    crops = np.stack([crop_resize(f, roi) for f in frames]).astype(np.float32) / 255.0
    return normalize(crops).numpy()
