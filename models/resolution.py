"""The network's input size, from the product: the usual machine-vision rule is that a defect must
span 3-5 pixels in the image the network sees, so the ROI is scaled to put the smallest defect at
PIXELS_PER_DEFECT pixels (never more than needed: cost grows with the square of the side).

dataset.json may say either `"input_size": N` (the side, a multiple of 16 in SIDE_RANGE) or
`"smallest_defect_px": w` (the smallest defect's width in the camera frame's pixels, from which the
side follows); neither: DEFAULT_SIDE, the size the CPU budget was set for. The network is fully
convolutional, so a larger ROI at full resolution is simply a larger input (equivalent to
overlapping tiles, without their seams); measured costs per side: `python -m models.input_cost`.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_SIDE = 128
PIXELS_PER_DEFECT = 4
SIDE_RANGE = (64, 512)
_STEP = 16  # the network's coarsest stride


def side_for(roi_side: int, smallest_defect_px: float) -> int:
    """Input side that shows a `smallest_defect_px` wide defect of a `roi_side` px ROI at
    PIXELS_PER_DEFECT px, rounded up to a multiple of 16 and kept within SIDE_RANGE."""
    side = math.ceil(roi_side * PIXELS_PER_DEFECT / smallest_defect_px / _STEP) * _STEP
    return min(max(side, SIDE_RANGE[0]), SIDE_RANGE[1])


def input_side(info: dict[str, Any], roi_side: int) -> int:
    """The side from dataset.json's `info` for a ROI (or image) `roi_side` px across; ValueError names
    the bad setting."""
    size, smallest = info.get("input_size"), info.get("smallest_defect_px")
    if size is not None and smallest is not None:
        raise ValueError("give input_size or smallest_defect_px, not both")
    if size is not None:
        if type(size) is not int or size % _STEP or not SIDE_RANGE[0] <= size <= SIDE_RANGE[1]:
            raise ValueError(f"input_size must be a multiple of {_STEP} in {SIDE_RANGE[0]}..{SIDE_RANGE[1]}, "
                             f"got {size!r}")  # fmt: skip
        return size
    if smallest is not None:
        if isinstance(smallest, bool) or not isinstance(smallest, int | float) or not 0 < smallest < math.inf:
            raise ValueError(f"smallest_defect_px must be a positive number of pixels, got {smallest!r}")
        return side_for(roi_side, float(smallest))
    return DEFAULT_SIDE


def resolution_note(roi_side: int, side: int, smallest_defect_px: float | None) -> str | None:
    """A warning when defects may be too small for the chosen side: the stated smallest defect spans
    under 3 px even at the largest side, or (size not derived from a stated defect width) the ROI
    is shrunk, so defects narrower than a stated width in the frame may be missed; else None."""
    scale = side / roi_side
    if smallest_defect_px is not None:
        spans = smallest_defect_px * scale
        if spans < 3:
            return (f"the smallest defect ({smallest_defect_px:g} px) spans {spans:.1f} px at the largest input side "
                    f"({side} px for a {roi_side} px ROI); crop a smaller ROI or use a closer lens")  # fmt: skip
        return None
    if scale < 1:
        return (f"the {roi_side} px ROI is seen at {side} px ({scale:.2f}x): defects narrower than {3 / scale:.1f} px "
                "in the frame span under 3 px in the network's input and may be missed (dataset.json: "
                "smallest_defect_px)")  # fmt: skip
    return None
