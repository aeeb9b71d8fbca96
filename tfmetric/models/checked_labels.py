"""`fit` / `evaluate` that check in-memory labels (or ids) before Keras converts them."""

from tfmetric._src import inputs as inputs_lib


class CheckedLabelsMixin:
    """Mixin for a `keras.Model` whose `y` holds class labels or ids.

    Keras converts in-memory `y` to backend tensors before `compute_loss` sees
    it: under JAX without `jax_enable_x64`, int64 values beyond int32 are
    truncated there and distinct labels (classes, samples, candidates) merge.
    `fit` checks `y` and `validation_data`'s labels, `evaluate` its `y`, with
    `inputs.check_fit_labels` (an error naming the argument); datasets and
    generators are not read ahead. Listed before `keras.Model` in the bases.
    """

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; in-memory labels or ids are checked first."""
        inputs_lib.check_fit_labels(y, "y")
        held_out = inputs_lib.validation_labels(kwargs.get("validation_data"))
        inputs_lib.check_fit_labels(held_out, "validation_data")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; in-memory labels or ids are checked as in `fit`."""
        inputs_lib.check_fit_labels(y, "y")
        return super().evaluate(x, y, *args, **kwargs)
