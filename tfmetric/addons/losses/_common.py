"""Shared pieces of the TensorFlow Addons drop-ins."""

import keras
from keras import ops

from tfmetric._src import inputs, validation
from tfmetric._src.autograph import as_written
from tfmetric.addons.losses import metric_learning
from tfmetric.losses import batch, scheduled

DISTANCE_METRICS = ("L2", "squared-L2", "angular")
_LOSS_OPTIONS = ("reduction", "dtype")


# Keras 3 resolves a loss given as a string (`keras.losses.get("...")`,
# `compile(loss="...")`) only through its table of built-in losses, with no
# public hook; the Addons names are added to that table so that Addons code
# naming its losses by string keeps working. `tests/addons/test_names.py`
# fails if a Keras release moves the table.
_KERAS_LOSS_TABLE = keras.losses.get.__globals__.get("ALL_OBJECTS_DICT")


def addons_name(name):
    """The name TensorFlow Addons registered `name` under."""
    return f"Addons>{name}"


def registered(name):
    """Registers under `tfmetric>addons.<name>`, and resolves Addons' `Addons>name`.

    Objects are saved under `tfmetric>addons.<name>` (apart from
    `tfmetric.losses`); `Addons>name` is an alias in Keras' custom objects (so
    `.keras` files and configs written with TensorFlow Addons load) and in
    Keras' table of loss names (so `keras.losses.get("Addons>name")` and
    `compile(loss="Addons>name")` work).
    """

    def register(obj):
        obj = keras.saving.register_keras_serializable(package="tfmetric", name=f"addons.{name}")(
            obj
        )
        keras.saving.get_custom_objects()[addons_name(name)] = obj
        if isinstance(_KERAS_LOSS_TABLE, dict):
            _KERAS_LOSS_TABLE[addons_name(name)] = obj
        return obj

    return register


def check_distance_metric(value):
    if callable(value) or value in DISTANCE_METRICS:
        return value
    raise ValueError(
        f"`distance_metric` must be one of {list(DISTANCE_METRICS)} or a callable mapping "
        f"embeddings (batch, dim) to a (batch, batch) distance matrix; got {value!r}."
    )


def distance_matrix(embeddings, distance_metric):
    """The float32 `(B, B)` matrix Addons computes for `distance_metric`."""
    if distance_metric == "L2":
        return metric_learning.pairwise_distance(embeddings, squared=False)
    if distance_metric == "squared-L2":
        return metric_learning.pairwise_distance(embeddings, squared=True)
    if distance_metric == "angular":
        return metric_learning.angular_distance(embeddings)
    matrix = ops.cast(distance_metric(embeddings), "float32")
    if len(matrix.shape) != 2:
        raise ValueError(
            "`distance_metric` must return a (batch, batch) matrix; got shape "
            f"{tuple(matrix.shape)}."
        )
    return matrix


def serialize_distance_metric(value):
    if isinstance(value, str):
        return value
    return keras.saving.serialize_keras_object(value)


def deserialize_distance_metric(value):
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


def check_margin(margin):
    """Validates a margin given as Addons allowed (`FloatTensorLike`).

    Addons typed margins as numbers or tensors: a number, a NumPy scalar or a
    0-d array, or an eager scalar tensor is checked and returned as a float;
    a floating scalar `tf.Variable` / `keras.Variable` is checked at its
    current value and kept, so that assigning to it (a margin schedule)
    changes the loss; a symbolic scalar tensor (inside a `tf.function`) is
    used as given.
    """
    if ops.is_tensor(margin) or isinstance(margin, keras.Variable):
        dtype = keras.backend.standardize_dtype(margin.dtype)
        if tuple(margin.shape) != () or not dtype.startswith(("float", "bfloat")):
            raise ValueError(
                "`margin` must be a number or a floating scalar tensor; got a tensor of "
                f"shape {tuple(margin.shape)} and dtype {dtype}."
            )
        try:
            value = validation.check_number(float(ops.convert_to_numpy(margin)), "margin")
        except (TypeError, NotImplementedError, AttributeError):
            return ops.cast(margin, "float32")  # symbolic: its value is known when run
        return margin if hasattr(margin, "assign") else value
    return scheduled.margin_value(margin)  # numbers and 0-d NumPy arrays, checked


def margin_value(margin):
    """A checked margin as used in a loss: a float, or a float32 tensor without gradient.

    A margin is never trained: a variable margin (trainable by default) would
    otherwise be differentiated through the mining loop, which XLA cannot do.
    """
    if isinstance(margin, float):
        return margin
    return ops.stop_gradient(ops.cast(margin, "float32"))


def margin_config(margin):
    """A margin's config value: a variable's current value as a float."""
    return margin if isinstance(margin, float) else float(ops.convert_to_numpy(margin))


def scalar_like(value, reference):
    """Casts a float32 scalar loss to the floating dtype of `reference`, as Addons returns."""
    dtype = keras.backend.standardize_dtype(reference.dtype)
    return ops.cast(value, dtype) if dtype.startswith(("float", "bfloat")) else value


def split_loss_options(cls_name, kwargs):
    """Keeps Keras' `reduction`/`dtype` from `**kwargs`; rejects anything else."""
    unknown = sorted(set(kwargs) - set(_LOSS_OPTIONS))
    if unknown:
        raise TypeError(f"{cls_name} got unexpected keyword arguments {unknown}.")
    return kwargs.get("reduction", "sum_over_batch_size"), kwargs.get("dtype")


class AddonsLoss(keras.losses.Loss):
    """Base of the drop-in classes: results take `y_pred`'s floating dtype, as in Addons.

    Keras 3 casts `y_pred` to the loss's dtype policy (float32) before `call`;
    the values are computed and reduced in float32 there, then cast back to
    the floating dtype `y_pred` had (float16, bfloat16, float64), which is what
    Addons' Keras 2 losses returned.

    Configs written by TensorFlow Addons (Keras 2 losses, no `dtype` key) load
    with the reduction Addons applied: Addons' classes ignored `reduction` and
    returned the batch mean (`addons_mean = True`), and Keras 2's `"auto"` was
    `"sum_over_batch_size"`.
    """

    addons_mean = True

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred)
        return scalar_like(super().__call__(y_true, y_pred, sample_weight), y_pred)

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "dtype" not in config:
            reduction = config.get("reduction", "sum_over_batch_size")
            if cls.addons_mean or reduction == "auto":
                config["reduction"] = "sum_over_batch_size"
        return cls(**config)

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self._dtype_policy.name
        return config


class LabelLoss(AddonsLoss):
    """Base of the drop-ins taking integer class labels as `y_true`.

    Subclasses implement `per_sample(labels, y_pred)`, returning `(B,)` values
    whose mean is Addons' scalar loss. Labels are validated and mapped to
    first-occurrence ids before Keras casts `y_true` to the loss dtype, so
    large label values stay exact.
    """

    @as_written
    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true = inputs.check_host_labels(y_true, "y_true", renumber=True)
        labels, _ = batch.prepare_labels_and_embeddings(y_true, y_pred, batch.LOSS_INPUT_NAMES)
        return super().__call__(inputs.first_occurrence_ids(labels), y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return self.per_sample(ops.cast(y_true, "int32"), y_pred)

    def per_sample(self, labels, y_pred):
        raise NotImplementedError
