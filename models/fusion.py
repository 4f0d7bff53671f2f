"""One reject score from the learned and the anomaly signal, learned on data the network never
trained on (stacking). Pure NumPy; `net.Decision` computes the same thing inside the model.
The learned signal is the classifier's 1 - P(good), or the defect map's peak where that is larger
(net.Decision.learned); the names below say "class" for it, as the model's buffers do.

Each signal is put on a log scale (the learned signal as a logit, the anomaly distance as
a log) and standardized by how good parts spread in it: centre the median, unit the distance from
median to 90th percentile (robust: one odd good image barely moves either). The fused score is
z = cos(a) * anomaly' + sin(a) * classifier', with the angle a chosen for the most validation defects
caught at the target false-reject rate on calibration good parts, or at the rate that rejects ten of
them if that is higher (a cut above the last few good scores would choose by chance); ties: the
larger AUROC, then the angle nearest 45 degrees. Both weights stay >= 0: more defect-like or more unusual
never lowers a part's score, so a defect type never seen in training still rises with the anomaly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.thresholds import cut_for_frr

_EPS = 1e-6
_ANGLES = np.linspace(0.0, np.pi / 2, 19)  # 5 degree steps


def class_signal(class_score: np.ndarray) -> np.ndarray:
    """1 - P(good) as a logit (the classifier's saturated tail spread out again)."""
    p = np.clip(class_score, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def anomaly_signal(distance: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(distance, _EPS))


@dataclass(frozen=True)
class Fusion:
    anomaly_center: float
    anomaly_scale: float
    class_center: float
    class_scale: float
    angle: float
    """Radians: 0 = the anomaly signal alone, pi/2 = the classifier alone."""

    def z(self, class_score: np.ndarray, distance: np.ndarray) -> np.ndarray:
        a = (anomaly_signal(distance) - self.anomaly_center) / self.anomaly_scale
        c = (class_signal(class_score) - self.class_center) / self.class_scale
        return np.cos(self.angle) * a + np.sin(self.angle) * c

    def summary(self) -> dict[str, float]:
        return {**asdict(self), "angle_degrees": float(np.degrees(self.angle))}


def _spread(x: np.ndarray) -> tuple[float, float]:
    center = float(np.median(x))
    return center, max(float(np.quantile(x, 0.9)) - center, 1e-3) / 1.2816  # a normal's sigma


def fit_fusion(good_class: np.ndarray, good_distance: np.ndarray, defect_class: np.ndarray,
               defect_distance: np.ndarray, target_frr: float) -> Fusion:  # fmt: skip
    """Learn the fusion from good parts' and defects' signals (neither seen by the network in training)."""
    if len(good_class) == 0:
        raise ValueError("fusing the scores needs good images the network did not train on")
    ac, asc = _spread(anomaly_signal(good_distance))
    cc, csc = _spread(class_signal(good_class))
    if len(defect_class) == 0:
        return Fusion(ac, asc, cc, csc, np.pi / 4)
    rate = max(target_frr, 10 / len(good_class))
    best: tuple[float, float, float] | None = None
    chosen = np.pi / 4
    for angle in _ANGLES:
        f = Fusion(ac, asc, cc, csc, float(angle))
        zg, zd = f.z(good_class, good_distance), f.z(defect_class, defect_distance)
        detected = float((zd >= cut_for_frr(zg, rate)).mean())
        auc = float((zd[:, None] > zg[None, :]).mean() + 0.5 * (zd[:, None] == zg[None, :]).mean())
        key = (detected, auc, -abs(angle - np.pi / 4))
        if best is None or key > best:
            best, chosen = key, float(angle)
    return Fusion(ac, asc, cc, csc, chosen)
