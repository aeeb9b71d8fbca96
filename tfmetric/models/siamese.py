"""Siamese network: one shared embedding tower applied to the two inputs of a pair."""

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric.layers.paired_distance import PairedDistance
from tfmetric.models import shared_tower

__all__ = ["SiameseModel"]

_NAMES = ("x1", "x2")


def _pair_scores(head, e1, e2):
    """`head(e1, e2)` as one value per pair, `(B,)`; a clear error for any other shape."""
    scores = head(e1, e2)
    shape = tuple(getattr(scores, "shape", ()))
    if len(shape) == 2 and shape[-1] == 1:
        return ops.squeeze(scores, axis=-1)
    if len(shape) != 1:
        raise ValueError(
            f"`head` must return one value per pair, shape (batch,) or (batch, 1); "
            f"{type(head).__name__} returns shape {shape} for embeddings of shape "
            f"{tuple(e1.shape)}."
        )
    return scores


_PAIR_LABEL_LOSS_NAMES = ("binary_crossentropy", "bce", "binary_focal_crossentropy")


def _pair_label_losses():
    from tfmetric.losses.pair_contrastive import PairContrastiveLoss

    return (
        PairContrastiveLoss,
        keras.losses.BinaryCrossentropy,
        keras.losses.BinaryFocalCrossentropy,
    )


def check_pair_labels(labels, name):
    """Rejects in-memory pair labels other than 0 (different) and 1 (same), before training.

    Datasets and generators are left alone (reading them would consume data).
    """
    if (
        labels is None
        or not isinstance(labels, (np.ndarray, list, tuple))
        and not hasattr(labels, "__array__")
    ):
        return
    values = np.asarray(labels)
    if values.dtype == object or not np.issubdtype(values.dtype, np.number):
        raise ValueError(
            f"`{name}` must hold numeric pair labels 0 or 1; got dtype {values.dtype}."
        )
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = np.unique(bad[np.isfinite(bad)])[:5].tolist() + (
            ["nan"] if np.isnan(bad).any() else []
        )
        raise ValueError(
            f"`{name}` must hold pair labels 0 (different) or 1 (same class); got "
            f"{bad.size} other value(s), e.g. {shown}."
        )


@keras.saving.register_keras_serializable(package="tfmetric")
class SiameseModel(keras.Model):
    """Siamese network: the same `embedder` (shared weights) on both inputs of a pair.

    A functional model (like keras-hub's task models): two `keras.Input`s
    `x1` and `x2`, the one `embedder` called on each, then a distance layer
    (`tfmetric.layers.PairedDistance`) or a `head`. `summary()` and
    `keras.utils.plot_model` show the shared tower with its two inbound
    connections. `model.predict([x1, x2])` (or `{"x1": ..., "x2": ...}`)
    returns one value per pair, shape `(B,)`:

    - without `head`: the distance `d(embedder(x1), embedder(x2))` (a
      similarity for similarity "distances" such as `"inner_product"`). Train
      it with `tfmetric.losses.PairContrastiveLoss` on `((x1, x2), same)` batches from
      `tfmetric.data.pair_dataset`, where **`same` = 1 for similar pairs**.
    - with `head`: `head(embedder(x1), embedder(x2))`, for instance a learned
      weighted L1 distance followed by a sigmoid (Koch et al. 2015,
      `tfmetric.layers.WeightedL1`) giving the probability that the pair is
      similar, trained with `keras.losses.BinaryCrossentropy()` on the same
      labels. Any Keras layer called on two embedding batches and returning
      `(B,)` or `(B, 1)` works; another shape is an error here.

    The input shape and dtype come from the embedder's own `keras.Input`
    (a functional or `Sequential` embedder); for a subclassed embedder or a
    bare layer, give `input_shape` (and `input_dtype`, e.g. `"uint8"` or
    `"string"` for encoded images).

    Attributes:
        embedder: The shared tower: embed single inputs with it for retrieval.
        distance: The `tfmetric.distances.Distance` of the distance layer
            (used when there is no head).
        head: The head layer, or `None`.

    The model saves to `.keras` and loads without `custom_objects`, with
    `safe_mode=True`.

    Args:
        embedder: A Keras model or layer mapping a batch of inputs to
            embeddings `(B, D)`.
        distance: Name, config or `tfmetric.distances.Distance` used without
            a head. Defaults to `"euclidean"`.
        head: Optional Keras layer `head(e1, e2) -> (B,)` replacing the
            distance. Defaults to `None`.
        input_shape: Shape of one input sample, without the batch axis.
            Defaults to `None`: the embedder's input shape.
        input_dtype: Dtype of the inputs. Defaults to `None`: the embedder's
            input dtype, else `"float32"`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.SiameseModel(embedder)
    >>> model.compile(optimizer="adam")
    >>> x1, x2 = np.ones((3, 4)), np.zeros((3, 4))
    >>> tuple(model.predict([x1, x2], verbose=0).shape)
    (3,)

    Reference:
        Bromley et al., "Signature Verification using a Siamese Time Delay
        Neural Network", NeurIPS 1993; Koch, Zemel and Salakhutdinov, "Siamese
        Neural Networks for One-shot Image Recognition", ICML Deep Learning
        Workshop 2015.
    """

    def __init__(
        self,
        embedder,
        distance="euclidean",
        head=None,
        input_shape=None,
        input_dtype=None,
        **kwargs,
    ):
        # === Layers ===
        embedder = shared_tower.check_embedder(embedder)
        distance = distances_lib.get(distance)
        if head is not None and not isinstance(head, keras.layers.Layer):
            raise TypeError(f"`head` must be a Keras layer or None; got {type(head).__name__}.")
        shape, dtype = shared_tower.input_spec(embedder, input_shape, input_dtype)

        # === Functional model ===
        inputs = shared_tower.branch_inputs(_NAMES, shape, dtype)
        e1, e2 = (embedder(x) for x in inputs)
        if head is None:
            scores = PairedDistance(distance, name="distance")(e1, e2)
        else:
            scores = _pair_scores(head, e1, e2)
        super().__init__(inputs=inputs, outputs=scores, **kwargs)

        # === Config ===
        self.embedder = embedder
        self.distance = distance
        self.head = head
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        self._input_dtype_arg = input_dtype

    def call(self, inputs, training=None, mask=None, **kwargs):
        inputs = shared_tower.unpack_inputs(inputs, _NAMES)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _takes_pair_labels(self):
        """Whether the compiled loss reads `y` as same (1) / different (0) pair labels."""
        loss = getattr(self, "loss", None)
        if isinstance(loss, str):
            return loss in _PAIR_LABEL_LOSS_NAMES
        return isinstance(loss, _pair_label_losses()) or loss is keras.losses.binary_crossentropy

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; with a pair-label loss (`PairContrastiveLoss`, binary
        cross-entropy), in-memory labels other than 0/1 are an error before training."""
        if self._takes_pair_labels():
            check_pair_labels(y, "y")
            validation = kwargs.get("validation_data")
            if isinstance(validation, (tuple, list)) and len(validation) >= 2:
                check_pair_labels(validation[1], "validation_data")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; with a pair-label loss, labels other than 0/1 are an error."""
        if self._takes_pair_labels():
            check_pair_labels(y, "y")
        return super().evaluate(x, y, *args, **kwargs)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedder": keras.saving.serialize_keras_object(self.embedder),
            "distance": distances_lib.serialize(self.distance),
            "head": None if self.head is None else keras.saving.serialize_keras_object(self.head),
            "input_shape": self._input_shape_arg,
            "input_dtype": self._input_dtype_arg,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        if config.get("head") is not None:
            config["head"] = keras.saving.deserialize_keras_object(config["head"])
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)
