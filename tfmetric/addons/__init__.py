"""Drop-in replacements for TensorFlow Addons' metric-learning losses.

TensorFlow Addons is end-of-life and cannot be installed beside Keras 3. Its
metric-learning losses live on here with the same names, arguments, defaults,
values and gradients (TensorFlow Addons 0.23). Migrating is an import change:

```python
import tfmetric.addons as tfa  # was: import tensorflow_addons as tfa

model.compile(optimizer="adam", loss=tfa.losses.TripletSemiHardLoss(margin=1.0))
```

Everything is available both as `tfmetric.addons.losses.X` (the
`tfa.losses.X` path) and as `tfmetric.addons.X`:

- `TripletSemiHardLoss` / `triplet_semihard_loss`,
  `TripletHardLoss` / `triplet_hard_loss`
  (`distance_metric="L2"`, `"squared-L2"`, `"angular"` or a callable);
- `ContrastiveLoss` / `contrastive_loss` (binary pair labels, 1 = similar,
  and precomputed pair distances);
- `LiftedStructLoss` / `lifted_struct_loss`;
- `NpairsLoss` / `npairs_loss`, `NpairsMultilabelLoss` /
  `npairs_multilabel_loss` (`y_pred` is the anchor × positive similarity
  matrix);
- `losses.metric_learning.pairwise_distance` and `angular_distance`.

Names: every loss and function also resolves under the name Addons
registered it with, `Addons>TripletSemiHardLoss`, `Addons>triplet_semihard_loss`,
... — through `keras.losses.get`, `model.compile(loss="Addons>...")` and
`.keras` files or JSON configs written with Addons (whose classes ignored
`reduction` and returned the batch mean; such configs load with that mean).
tfmetric saves them as `tfmetric>addons.<Name>`. Like Addons, the classes
and functions return `y_pred`'s floating dtype (float16, bfloat16, float64),
computing in float32 inside.

The differences from Addons that stay, all deliberate (this list is the one
place they are documented):

1. Where Addons returns NaN — a batch without positive pairs in
   `triplet_semihard_loss` and `lifted_struct_loss`, a one-class batch in
   `lifted_struct_loss`, a sample without classes in
   `npairs_multilabel_loss` — these return 0 with a zero gradient.
2. Memory is O(B²) forward and backward: Addons' semi-hard and lifted losses
   tile the `(B, B)` distance matrix B times (O(B³)); these never build a
   tensor larger than `(B, B)`.
3. Computation is in float32 whatever the input dtype (Addons computed
   float64 inputs in float64); results are cast back to the input's dtype.
4. The Keras classes return per-sample values (whose mean is Addons' scalar)
   to Keras' reduction, default `"sum_over_batch_size"`, so `sample_weight`
   weights samples and `reduction` is honoured (Addons forced `"none"` on a
   scalar). For `NpairsLoss` the per-sample value is one anchor's row
   cross-entropy: the mean over anchors is Addons' loss, which needs
   `"sum_over_batch_size"` (or `"mean"`); `"sum"` gives B times it.
   Everything compiles with `jit_compile=True`.
5. Bad arguments raise a `ValueError` naming them (unknown `distance_metric`,
   negative `margin`, non-integer class labels).

For tfmetric's own, more general losses see `tfmetric.losses`.
"""

from tfmetric.addons import losses
from tfmetric.addons.losses import (
    ContrastiveLoss,
    LiftedStructLoss,
    NpairsLoss,
    NpairsMultilabelLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
    contrastive_loss,
    lifted_struct_loss,
    metric_learning,
    npairs_loss,
    npairs_multilabel_loss,
    triplet_hard_loss,
    triplet_semihard_loss,
)
from tfmetric.addons.losses.metric_learning import angular_distance, pairwise_distance

__all__ = [
    "ContrastiveLoss",
    "LiftedStructLoss",
    "NpairsLoss",
    "NpairsMultilabelLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
    "angular_distance",
    "contrastive_loss",
    "lifted_struct_loss",
    "losses",
    "metric_learning",
    "npairs_loss",
    "npairs_multilabel_loss",
    "pairwise_distance",
    "triplet_hard_loss",
    "triplet_semihard_loss",
]
