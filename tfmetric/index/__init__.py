"""Nearest-neighbour indexes and the lookup → calibrate → match workflow.

- `ExactIndex` / `ApproximateIndex`: embeddings with integer or string ids,
  integer labels and JSON payloads; `add` / `remove` (incremental), `search`,
  `lookup` (a printable `Lookups` table), atomic `save` / `load`.
- `calibrate`: thresholds meeting precision / recall / F1 targets on
  labelled queries (`calibration_curve`, `plot_calibration`).
- `match`: the nearest neighbour's label, or an "unknown" marker beyond the
  threshold; `evaluate_classification`: precision / recall / F1 there.
"""

from tfmetric.index.approximate import ApproximateIndex
from tfmetric.index.base import Index
from tfmetric.index.calibration import (
    Calibration,
    CalibrationCurve,
    calibrate,
    calibration_curve,
    evaluate_classification,
    match,
    plot_calibration,
)
from tfmetric.index.exact import ExactIndex
from tfmetric.index.lookups import Lookups

__all__ = [
    "ApproximateIndex",
    "Calibration",
    "CalibrationCurve",
    "ExactIndex",
    "Index",
    "Lookups",
    "calibrate",
    "calibration_curve",
    "evaluate_classification",
    "match",
    "plot_calibration",
]
