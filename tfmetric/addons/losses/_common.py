"""Shared pieces of the TensorFlow Addons drop-ins."""

import keras
from keras import ops

from tfmetric.addons.losses import metric_learning
from tfmetric.losses import batch

DISTANCE_METRICS = ("L2", "squared-L2", "angular")
_LOSS_OPTIONS = ("reduction", "dtype")


def registered(name):
    """Registers under `tfmetric>addons.<name>`, apart from `tfmetric.losses`."""
    return keras.saving.register_keras_serializable(package="tfmetric", name=f"addons.{name}")


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


class LabelLoss(keras.losses.Loss):
    """Base of the drop-ins taking integer class labels as `y_true`.

    Subclasses implement `per_sample(labels, y_pred)`, returning `(B,)` values
    whose mean is Addons' scalar loss. Labels are validated and mapped to
    first-occurrence ids before Keras casts `y_true` to the loss dtype, so
    large label values stay exact.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        labels, _ = batch.prepare_labels_and_embeddings(y_true, y_pred)
        return super().__call__(batch.first_occurrence_ids(labels), y_pred, sample_weight)

    def call(self, y_true, y_pred):
        return self.per_sample(ops.cast(y_true, "int32"), y_pred)

    def per_sample(self, labels, y_pred):
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config["dtype"] = self._dtype_policy.name
        return config
