"""What a product's good parts may vary in, as the trainer's augmentation: set per product in the
dataset's `dataset.json` under `"augmentation"`, checked by `dataset check`.

Every key is optional; the defaults suit a flat surface with no preferred orientation:
    "augmentation": {"dihedral": true, "brightness": 0.12, "contrast": 0.15, "shift_px": 0,
                     "rotation_deg": 0, "noise": 0.015, "blur_sigma": 0, "pseudo_anomalies": 0.5}
- dihedral: turn by multiples of 90 degrees and mirror (false for a part with a printed or
  machined layout that always arrives the same way round);
- brightness / contrast: lighting drift, as a fraction of full scale / of the image's contrast;
- shift_px, rotation_deg: how far the part may sit off its taught position (0: fixtured), the
  shift in pixels of the network's input (models.resolution), whole pixels (no resampling blur);
- noise: sensor noise, standard deviation as a fraction of full scale (per pixel, never in blobs);
- blur_sigma: defocus in pixels. Off by default: a smear or a polished spot looks like defocus, and
  teaching blur as good teaches the network to pass them;
- pseudo_anomalies: share of good training images that get a generic painted flaw
  (models.pseudo_anomaly), which keeps the network alert to flaws it has no labels for; 0 turns it
  off, at most 0.8 (the classifier learns "good" from the unpainted rest). 0.8 measured against 0.5
  (three seeds, held-out suite): 2/4/5 points more never-trained defects on brick/grass/gravel, 1.3/0.4/1.6
  fewer trained ones; but fine-tuned on 50 flagged parts of a new type (the feedback loop) it learnt the
  new type worse (13 % against 33 %; one run of the short loop) and newly missed 26 parts the model
  before it caught. So 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Augmentation:
    dihedral: bool = True
    brightness: float = 0.12
    contrast: float = 0.15
    shift_px: int = 0
    rotation_deg: float = 0.0
    noise: float = 0.015
    blur_sigma: float = 0.0
    pseudo_anomalies: float = 0.5

    @staticmethod
    def from_info(value: Any) -> Augmentation:
        """From dataset.json's "augmentation" object (None: the defaults); ValueError names the bad key."""
        if value is None:
            return Augmentation()
        if not isinstance(value, dict):
            raise ValueError(f"augmentation must be an object of settings, got {value!r}")
        known = {f.name: f for f in fields(Augmentation)}
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"augmentation has unknown setting(s) {unknown}; known: {sorted(known)}")
        limits = {"brightness": 0.5, "contrast": 0.5, "shift_px": 32, "rotation_deg": 45, "noise": 0.1,
                  "blur_sigma": 3.0, "pseudo_anomalies": 0.8}  # fmt: skip
        for key, v in value.items():
            if key == "dihedral":
                if not isinstance(v, bool):
                    raise ValueError(f"augmentation.dihedral must be true or false, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= limits[key]:
                raise ValueError(f"augmentation.{key} must be a number in 0..{limits[key]}, got {v!r}")
            elif key == "shift_px" and not isinstance(v, int):
                raise ValueError(f"augmentation.shift_px must be a whole number of pixels, got {v!r}")
        return Augmentation(**value)
