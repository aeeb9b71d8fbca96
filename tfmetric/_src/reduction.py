"""Per-sample loss values and the normalisers their reductions need."""

from keras import ops


def spread_mean(total, denominator):
    """Per-sample values whose batch mean is `sum(total) / denominator`.

    Keras reduces a loss by averaging the per-sample values; scaling by
    `B / denominator` turns that average into the documented normalisation
    (e.g. the mean over positive pairs) while keeping sample weights per anchor.
    """
    size = ops.cast(ops.shape(total)[0], "float32")
    return total * size / ops.maximum(denominator, 1.0)


def mean_over(values, valid):
    """Per-sample values whose batch mean is the mean of `values` over `valid`."""
    return spread_mean(ops.where(valid, values, 0.0), ops.sum(ops.cast(valid, "float32")))
