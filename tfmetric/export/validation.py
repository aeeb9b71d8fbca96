"""Held-out data of an export: parity inputs, int8 calibration, verification pairs."""

import os

import numpy as np

from tfmetric.export import inputs as inputs_lib

__all__ = ["ValidationData", "label_pairs"]


class ValidationData:
    """Held-out data given to `export_for_serving`, in memory.

    It gives the parity report its inputs (and, with labels, its retrieval
    metrics), calibrates the `int8` TFLite variant when no representative set
    is given, and provides the pairs on which the `verify` threshold is
    calibrated and checked: `pairs` if given, else pairs drawn from `labels`
    (`label_pairs`).

    Args:
        inputs: Model inputs `(n, ...)`.
        labels: Optional integer labels `(n,)`.
        pairs: Optional verification pairs `(x1, x2, same)`: two input batches
            `(p, ...)` and `same` `(p,)`, 1 (or `True`) where the pair matches.

    Example:

    >>> x = np.zeros((6, 3), "float32")
    >>> data = tfmetric.export.ValidationData(x, labels=[0, 0, 1, 1, 2, 2])
    >>> x1, x2, same = data.verification_pairs()
    >>> x1.shape, int(same.sum()) == len(same) - int(same.sum())
    ((12, 3), True)
    """

    def __init__(self, inputs, labels=None, pairs=None):
        self.inputs = np.asarray(inputs)
        self.labels = None if labels is None else np.asarray(labels)
        self.pairs = None if pairs is None else tuple(np.asarray(p) for p in pairs)
        if self.pairs is not None and len(self.pairs) != 3:
            raise ValueError("`validation` `pairs` must be a tuple `(x1, x2, same)`.")

    def check(self, input_shape):
        """Validates against the model input shape; returns a float32 copy."""
        inputs = inputs_lib.load_inputs(self.inputs, input_shape, "validation")
        labels = None
        if self.labels is not None:
            labels = self.labels
            if labels.shape != (len(inputs),) or labels.dtype.kind not in "iu":
                raise ValueError(
                    f"`validation` `labels` must be integers of shape ({len(inputs)},); got "
                    f"{labels.dtype} {labels.shape}."
                )
            labels = labels.astype("int64")
        pairs = None
        if self.pairs is not None:
            x1, x2, same = self.pairs
            x1 = inputs_lib.load_inputs(x1, input_shape, "validation pairs x1")
            x2 = inputs_lib.load_inputs(x2, input_shape, "validation pairs x2")
            if len(x2) != len(x1) or same.shape != (len(x1),):
                raise ValueError(
                    f"`validation` `pairs` must hold as many x1, x2 and same values; got "
                    f"{len(x1)}, {len(x2)} and shape {same.shape}."
                )
            if same.dtype != bool and not (
                same.dtype.kind in "iu" and np.all((same == 0) | (same == 1))
            ):
                raise ValueError("`validation` `pairs` `same` must hold booleans or 0/1.")
            pairs = (x1, x2, same.astype(bool))
        return ValidationData(inputs, labels, pairs)

    @classmethod
    def from_source(cls, source, input_shape):
        """A checked `ValidationData` from any accepted form, or `None`.

        `source` is a `ValidationData`; a tuple `(inputs, labels)`; an array
        of inputs; a dict or an `.npz` path with `inputs` and optional
        `labels`, and optional pairs as `x1`, `x2`, `same`.
        """
        if source is None:
            return None
        if isinstance(source, (str, os.PathLike)):
            source = inputs_lib.load_npz(source, "validation")
            if "inputs" not in source:
                raise ValueError("`validation` file has no `inputs` array.")
        if isinstance(source, dict):
            pairs = None
            given = [key for key in ("x1", "x2", "same") if key in source]
            if given:
                missing = [key for key in ("x1", "x2", "same") if key not in source]
                if missing:
                    raise ValueError(
                        f"`validation` pairs need `x1`, `x2` and `same`; got {given}, "
                        f"missing {missing}."
                    )
                pairs = tuple(source[key] for key in ("x1", "x2", "same"))
            if "inputs" not in source:
                raise ValueError("`validation` must hold an `inputs` array.")
            source = cls(source["inputs"], source.get("labels"), pairs)
        elif isinstance(source, tuple):
            if len(source) != 2:
                raise ValueError(
                    f"`validation` as a tuple must be `(inputs, labels)`; got {len(source)} items."
                )
            source = cls(*source)
        elif not isinstance(source, cls):
            source = cls(source)
        return source.check(input_shape)

    def verification_pairs(self, per_sample=2, seed=0):
        """`(x1, x2, same)`: the given pairs, else pairs drawn from the labels, else `None`."""
        if self.pairs is not None:
            return self.pairs
        if self.labels is None:
            return None
        first, second, same = label_pairs(self.labels, per_sample, seed)
        return self.inputs[first], self.inputs[second], same


def label_pairs(labels, per_sample=2, seed=0):
    """Balanced verification pairs of labelled samples.

    Each sample is paired with up to `per_sample` other samples of its label
    and as many samples of other labels, drawn without replacement with a
    seeded generator.

    Args:
        labels: Integer labels `(n,)`.
        per_sample: Matching (and non-matching) partners per sample.
        seed: Seed of the draw.

    Returns:
        `(first, second, same)`: row indices `(p,)` and booleans `(p,)`.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    members = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    first, second, same = [], [], []
    for i, label in enumerate(labels):
        positives = members[label][members[label] != i]
        negatives = np.flatnonzero(labels != label)
        count = min(per_sample, len(positives), len(negatives))
        if count == 0:
            continue
        for partners, match in ((positives, True), (negatives, False)):
            chosen = rng.choice(partners, size=count, replace=False)
            first.extend([i] * count)
            second.extend(chosen.tolist())
            same.extend([match] * count)
    return (
        np.asarray(first, "int64"),
        np.asarray(second, "int64"),
        np.asarray(same, bool),
    )
