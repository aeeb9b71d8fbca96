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

Deliberate differences from Addons:

1. Where Addons returns NaN — a batch without positive pairs in
   `triplet_semihard_loss` and `lifted_struct_loss`, a one-class batch in
   `lifted_struct_loss`, a sample without classes in
   `npairs_multilabel_loss` — these return 0 with a zero gradient.
2. Memory is O(B²) forward and backward: Addons' semi-hard and lifted losses
   tile the `(B, B)` distance matrix B times (O(B³)); these never build a
   tensor larger than `(B, B)`.
3. Computation is in float32 whatever the input dtype (Addons upcasts only
   float16/bfloat16); functional forms return the input's floating dtype, as
   Addons does.
4. The Keras classes return per-sample values (whose mean is Addons' scalar)
   with the default `"sum_over_batch_size"` reduction, so `sample_weight`
   weights samples; everything compiles with `jit_compile=True`.
5. Bad arguments raise a `ValueError` naming them (unknown `distance_metric`,
   negative `margin`, non-integer class labels).

The classes are registered as `tfmetric>addons.<ClassName>` for `.keras`
files. For tfmetric's own, more general losses see `tfmetric.losses`.
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
