"""Siamese network: one shared embedding tower applied to the two inputs of a pair."""

import warnings

import keras
import numpy as np
from keras import ops

from tfmetric import distances as distances_lib
from tfmetric.layers.paired_distance import PairedDistance
from tfmetric.models import shared_tower

__all__ = ["SiameseModel"]

_NAMES = ("x1", "x2")


def _check_scores_shape(scorer, shape, embedding_shape):
    batch = embedding_shape[0]
    if shape not in ((batch,), (batch, 1)):
        raise ValueError(
            f"`scorer` must return one value per pair, shape (batch,) or (batch, 1); "
            f"{type(scorer).__name__} returns shape {shape} for embeddings of shape "
            f"{embedding_shape}."
        )


def _pair_scores(scorer, e1, e2):
    """`scorer(e1, e2)` as one value per pair, `(B,)`; a clear error for any other shape.

    The symbolic batch is usually unknown, so the scorer is also traced on a
    batch of 3 pairs: a scorer mixing the two batches is caught too.
    """
    scores = scorer(e1, e2)
    _check_scores_shape(scorer, tuple(scores.shape), tuple(e1.shape))
    if e1.shape[-1] is not None:
        probe = keras.KerasTensor((3, e1.shape[-1]), dtype=e1.dtype)
        spec = scorer.compute_output_spec(probe, probe)
        _check_scores_shape(scorer, tuple(spec.shape), tuple(probe.shape))
    return ops.squeeze(scores, axis=-1) if len(scores.shape) == 2 else scores


_PAIR_LABEL_LOSS_NAMES = ("binary_crossentropy", "bce", "binary_focal_crossentropy")


def _loss_reading(loss):
    """`(direction, name)`: how a pair-label loss reads the model's scores, else `None`.

    The contrastive loss reads distances (a similar pair is pulled to 0);
    binary cross-entropy reads the probability that the pair is similar.
    """
    from tfmetric.losses.pair_contrastive import PairContrastiveLoss, pair_contrastive_loss

    if isinstance(loss, PairContrastiveLoss) or loss is pair_contrastive_loss:
        return distances_lib.DISSIMILARITY, "PairContrastiveLoss"
    if isinstance(loss, str) and loss in _PAIR_LABEL_LOSS_NAMES:
        return distances_lib.SIMILARITY, f"{loss!r}"
    if loss is keras.losses.binary_crossentropy or isinstance(
        loss, (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)
    ):
        return distances_lib.SIMILARITY, type(loss).__name__
    return None


def _pair_labels_shape_error(name, shape):
    return ValueError(
        f"`{name}` must hold one pair label per pair, shape (pairs,) or (pairs, 1); got shape "
        f"{shape}."
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
    if values.ndim not in (1, 2) or values.ndim == 2 and values.shape[1] != 1:
        raise _pair_labels_shape_error(name, values.shape)
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
    (`tfmetric.layers.PairedDistance`) or a pair `scorer`. `summary()` and
    `keras.utils.plot_model` show the shared tower with its two inbound
    connections. `model.predict([x1, x2])` (or `{"x1": ..., "x2": ...}`)
    returns one value per pair, shape `(B,)`:

    - without `scorer`: the distance `d(embedder(x1), embedder(x2))` (a
      similarity for similarity "distances" such as `"inner_product"`). Train
      it with `tfmetric.losses.PairContrastiveLoss` on `((x1, x2), same)` batches from
      `tfmetric.data.pair_dataset`, where **`same` = 1 for similar pairs**.
    - with `scorer`: `scorer(embedder(x1), embedder(x2))`, for instance a
      learned weighted L1 distance followed by a sigmoid (Koch et al. 2015,
      `tfmetric.layers.WeightedL1`) giving the probability that the pair is
      similar, trained with `keras.losses.BinaryCrossentropy()` on the same
      labels.

    The pair scorer contract: a Keras layer called as `scorer(e1, e2)` on two
    embedding batches of the same shape `(B, D)`, returning one score per pair,
    shape `(B,)` (or `(B, 1)`, squeezed). Another output shape is a
    `ValueError` when the model is built. Learned distances
    (`tfmetric.layers.Mahalanobis`, `WeightedL1`) are pair scorers that also
    tell their direction (`tfmetric.distances.direction_of(scorer)`); the
    export reads it to decide `is_match`. (A "head", in tfmetric, is the other
    contract: `head(embeddings, labels)` returning per-sample loss values, as
    `tfmetric.models.ProxyModel` trains.)

    The input shape and dtype come from the embedder's own `keras.Input`
    (a functional or `Sequential` embedder); for a subclassed embedder or a
    bare layer, give `input_shape` (and `input_dtype`, e.g. `"uint8"` or
    `"string"` for encoded images).

    Attributes:
        embedder: The shared tower: embed single inputs with it for retrieval.
        distance: The `tfmetric.distances.Distance` of the distance layer
            (used when there is no scorer).
        scorer: The pair scorer layer, or `None`. (`head` is a deprecated
            alias.)

    The model saves to `.keras` and loads without `custom_objects`, with
    `safe_mode=True`.

    Args:
        embedder: A Keras model or layer mapping a batch of inputs to
            embeddings `(B, D)`.
        distance: Name, config or `tfmetric.distances.Distance` used without
            a scorer. Defaults to `"euclidean"`.
        scorer: Optional pair scorer, a Keras layer `scorer(e1, e2) -> (B,)`
            replacing the distance. Defaults to `None`.
        input_shape: Shape of one input sample, without the batch axis.
            Defaults to `None`: the embedder's input shape.
        input_dtype: Dtype of the inputs. Defaults to `None`: the embedder's
            input dtype, else `"float32"`.
        head: Deprecated alias of `scorer` (a `DeprecationWarning`).
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
        scorer=None,
        input_shape=None,
        input_dtype=None,
        head=None,
        **kwargs,
    ):
        # === Layers ===
        if head is not None:
            if scorer is not None:
                raise ValueError("Give `scorer` only; `head` is its deprecated alias.")
            warnings.warn(
                "`SiameseModel(head=...)` is deprecated: use `scorer=...` (a pair scorer; "
                "\"head\" names the (embeddings, labels) -> loss layers of ProxyModel).",
                DeprecationWarning,
                stacklevel=2,
            )
            scorer = head
        embedder = shared_tower.check_embedder(embedder)
        distance = distances_lib.get(distance)
        if scorer is not None and not isinstance(scorer, keras.layers.Layer):
            raise TypeError(
                "`scorer` must be a Keras layer called as `scorer(e1, e2)` or None; got "
                f"{type(scorer).__name__}."
            )
        shape, dtype = shared_tower.input_spec(embedder, input_shape, input_dtype)

        # === Functional model ===
        inputs = shared_tower.branch_inputs(_NAMES, shape, dtype)
        e1, e2 = (embedder(x) for x in inputs)
        if scorer is None:
            scores = PairedDistance(distance, name="distance")(e1, e2)
        else:
            scores = _pair_scores(scorer, e1, e2)
        super().__init__(inputs=inputs, outputs=scores, **kwargs)

        # === Config ===
        self.embedder = embedder
        self.distance = distance
        self.scorer = scorer
        self._input_shape_arg = None if input_shape is None else tuple(input_shape)
        self._input_dtype_arg = input_dtype

    @property
    def head(self):
        """Deprecated alias of `scorer`."""
        warnings.warn(
            "`SiameseModel.head` is deprecated: use `scorer`.", DeprecationWarning, stacklevel=2
        )
        return self.scorer

    def call(self, inputs, training=None, mask=None, **kwargs):
        inputs = shared_tower.unpack_inputs(inputs, _NAMES)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _takes_pair_labels(self):
        """Whether the compiled loss reads `y` as same (1) / different (0) pair labels."""
        return _loss_reading(getattr(self, "loss", None)) is not None

    def _score_direction(self):
        """The direction of the model's scores, or `None` for a scorer that does not tell it."""
        if self.scorer is None:
            return self.distance
        return distances_lib.direction_of(self.scorer)

    def _check_loss_direction(self):
        """Refuses a pair-label loss that reads the scores the other way round.

        A contrastive loss on similarities (or binary cross-entropy on
        distances) would pull dissimilar pairs together and push similar ones
        apart, with a loss that still decreases.
        """
        reading = _loss_reading(getattr(self, "loss", None))
        direction = self._score_direction()
        if reading is None or direction is None or reading[0].kind == direction.kind:
            return
        expected, loss_name = reading
        source = (
            f"its distance {distances_lib.serialize(self.distance)!r}"
            if self.scorer is None
            else f"its scorer {type(self.scorer).__name__}"
        )
        if expected.is_similarity:
            advice = (
                "Train distances with `tfmetric.losses.PairContrastiveLoss`, or give a scorer "
                "returning the probability that a pair is similar (e.g. "
                "`tfmetric.layers.WeightedL1`) for binary cross-entropy."
            )
        else:
            advice = (
                "Train a similarity scorer (probabilities) with "
                "`keras.losses.BinaryCrossentropy()`, or use a distance (no scorer, or a "
                "distance scorer such as `tfmetric.layers.Mahalanobis`) with the contrastive loss."
            )
        raise ValueError(
            f"The loss {loss_name} reads the model's scores as "
            + (
                "similarities (larger means more similar)"
                if expected.is_similarity
                else "distances (smaller means more similar)"
            )
            + ", but this SiameseModel "
            f"returns {direction.kind} scores from {source}: training would push similar pairs "
            f"apart and pull dissimilar pairs together. {advice}"
        )

    def _check_data(self, x, y, validation=None):
        shared_tower.check_branch_data(x, _NAMES, self._branch_shape, "x")
        self._check_loss_direction()
        if self._takes_pair_labels():
            check_pair_labels(y, "y")
            if isinstance(validation, (tuple, list)) and len(validation) >= 2:
                check_pair_labels(validation[1], "validation_data")

    @property
    def _branch_shape(self):
        return tuple(self.inputs[0].shape[1:])

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; with a pair-label loss (`PairContrastiveLoss`, binary
        cross-entropy), in-memory labels other than 0/1 (or of another shape than
        `(pairs,)`) are an error before training, and so is a loss that reads the
        scores the other way round (a contrastive loss on similarities, binary
        cross-entropy on distances)."""
        self._check_data(x, y, kwargs.get("validation_data"))
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`, with the checks of `fit`."""
        self._check_data(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; `x` must hold the two batches `(x1, x2)`."""
        shared_tower.check_branch_data(x, _NAMES, self._branch_shape, "x")
        return super().predict(x, *args, **kwargs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Pair labels as one value per pair, `(B,)`, for the pair-label losses.

        Labels of unknown rank (a dataset built without static shapes) are
        reshaped to the scores' shape, `(B, 1)` labels squeezed; any other
        static shape is a `ValueError` naming `y`.
        """
        if y is not None and ops.is_tensor(y) and self._takes_pair_labels():
            shape = y.shape
            rank = shape.rank if hasattr(shape, "rank") else len(shape)
            if rank is None:
                y = ops.reshape(y, ops.shape(y_pred))
            elif rank == 2 and shape[1] == 1:
                y = ops.squeeze(y, axis=1)
            elif rank != 1:
                raise _pair_labels_shape_error("y", tuple(shape))
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "embedder": keras.saving.serialize_keras_object(self.embedder),
            "distance": distances_lib.serialize(self.distance),
            "scorer": None
            if self.scorer is None
            else keras.saving.serialize_keras_object(self.scorer),
            "input_shape": self._input_shape_arg,
            "input_dtype": self._input_dtype_arg,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedder"] = keras.saving.deserialize_keras_object(config["embedder"])
        # Files saved before the rename hold the scorer under "head".
        scorer = config.pop("scorer", None) or config.pop("head", None)
        config.pop("head", None)
        if scorer is not None:
            config["scorer"] = keras.saving.deserialize_keras_object(scorer)
        if config.get("input_shape") is not None:
            config["input_shape"] = tuple(config["input_shape"])
        return cls(**config)
