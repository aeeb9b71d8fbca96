"""A Keras callback that logs retrieval metrics of the validation embeddings."""

import keras
import numpy as np
import tensorflow as tf

from tfmetric import distances as distances_lib
from tfmetric._src import validation
from tfmetric.metrics import retrieval
from tfmetric.models.siamese import SiameseModel
from tfmetric.models.triplet_model import TripletModel
from tfmetric.models.two_tower import TwoTowerModel


class RetrievalEvaluation(keras.callbacks.Callback):
    """Computes retrieval metrics at epoch end and adds them to `logs`.

    The model's output (one embedding tensor) is computed for the validation
    inputs (for a `tfmetric.models.SiameseModel` or `TripletModel`, whose
    output compares several inputs, the output of its shared `embedder`), and
    `tfmetric.metrics.evaluate_retrieval` scores it: leave-one-out
    over the validation set, or against `gallery_data` when given. Results go
    into `logs` as `val_map_at_r`, `val_precision_at_1`, `val_recall_at_5`,
    ... (with the default `prefix`), so `History`, `TensorBoard`,
    `EarlyStopping(monitor="val_map_at_r", mode="max")` and
    `ModelCheckpoint(monitor=...)` use them like any other metric. Place this
    callback *before* those in the `callbacks` list: Keras calls callbacks in
    order.

    With `every > 1`, metrics are computed at epochs `every, 2 * every, ...`
    and at the last epoch; other epochs carry no such keys (so `History`
    lists are shorter than the number of epochs, and `EarlyStopping` counts
    only evaluated epochs when it finds the key).

    Args:
        validation_data: `(inputs, labels)` arrays, or a `tf.data.Dataset`
            of `(inputs, labels)` batches (iterated once per evaluation).
        metrics: Names accepted by `evaluate_retrieval` (`"map_at_r"`,
            `"precision_at_1"`, `"recall_at_k"`, `"r_precision"`,
            `"mean_average_precision"`, `"mean_reciprocal_rank"`, `"nmi"`,
            `"ami"`). Defaults to `("map_at_r", "precision_at_1")`.
        every: Evaluate every `every` epochs. Defaults to `1`.
        gallery_data: Optional `(inputs, labels)` or dataset of references;
            `None` searches the validation set leave-one-out. Defaults to
            `None`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        k: The `k` of `recall_at_k`. Defaults to `(1, 5)`.
        batch_size: Batch size of the embedding pass over arrays. Defaults
            to `256`.
        prefix: Prefix of the log keys. Defaults to `"val_"`.

    Example:

    >>> import keras
    >>> x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    >>> y = np.repeat(np.arange(8), 8)
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model.compile(optimizer="sgd", loss=tfmetric.losses.TripletLoss())
    >>> history = model.fit(x, y, epochs=2, verbose=0, callbacks=[
    ...     tfmetric.callbacks.RetrievalEvaluation((x, y)),
    ...     keras.callbacks.EarlyStopping(monitor="val_map_at_r", mode="max")])
    >>> sorted(k for k in history.history if k.startswith("val_"))
    ['val_map_at_r', 'val_precision_at_1']

    Reference:
        Musgrave, Belongie, Lim. "A Metric Learning Reality Check". ECCV 2020.
    """

    def __init__(
        self,
        validation_data,
        metrics=("map_at_r", "precision_at_1"),
        every=1,
        gallery_data=None,
        distance="euclidean",
        k=(1, 5),
        batch_size=256,
        prefix="val_",
    ):
        super().__init__()
        self.validation_data = _check_data(validation_data, "validation_data")
        self.gallery_data = (
            None if gallery_data is None else _check_data(gallery_data, "gallery_data")
        )
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in retrieval.ALL_METRICS]
        if unknown or not metrics:
            raise ValueError(
                f"`metrics` must be a non-empty subset of {list(retrieval.ALL_METRICS)}; "
                f"got {metrics!r}."
            )
        self.metrics = metrics
        self.every = validation.check_int(every, "every")
        self.distance = distances_lib.get(distance)
        self.k = validation.check_ints(k, "k")
        self.batch_size = validation.check_int(batch_size, "batch_size")
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a string; got {prefix!r}.")
        self.prefix = prefix

    def _embedding_model(self):
        if isinstance(self.model, TwoTowerModel):
            raise ValueError(
                "RetrievalEvaluation scores the model's output as embeddings, and a "
                "TwoTowerModel outputs in-batch logits. Rank candidates with "
                "`model.retrieve`, or score `model.query_tower` / `model.candidate_tower` "
                "embeddings with `tfmetric.metrics.evaluate_retrieval`."
            )
        if not isinstance(self.model, (SiameseModel, TripletModel)):
            return self.model
        embedder = self.model.embedder
        if not isinstance(embedder, keras.Model):
            # A bare layer has no `predict`: wrap it on the twin model's input spec.
            spec = self.model.inputs[0]
            inputs = keras.Input(tuple(spec.shape[1:]), dtype=spec.dtype)
            embedder = keras.Model(inputs, embedder(inputs))
        return embedder

    def _embed(self, data):
        model = self._embedding_model()
        if isinstance(data, tf.data.Dataset):
            embeddings, labels = [], []
            for inputs, batch_labels in data.as_numpy_iterator():  # any Keras backend
                embeddings.append(np.asarray(model.predict_on_batch(inputs)))
                labels.append(np.asarray(batch_labels))
            embeddings, labels = np.concatenate(embeddings), np.concatenate(labels)
        else:
            inputs, labels = data
            embeddings = np.asarray(model.predict(inputs, batch_size=self.batch_size, verbose=0))
            labels = np.asarray(labels)
        if embeddings.ndim != 2:
            raise ValueError(
                "RetrievalEvaluation needs a model whose output is one (batch, dim) embedding "
                f"tensor; got output shape {embeddings.shape}."
            )
        return embeddings, labels

    def evaluate(self):
        """Returns the metrics of the current model (unprefixed names)."""
        query, query_labels = self._embed(self.validation_data)
        gallery, gallery_labels = (None, None)
        if self.gallery_data is not None:
            gallery, gallery_labels = self._embed(self.gallery_data)
        return retrieval.evaluate_retrieval(
            query,
            query_labels,
            gallery,
            gallery_labels,
            distance=self.distance,
            k=self.k,
            metrics=self.metrics,
        )

    def on_epoch_end(self, epoch, logs=None):
        last = self.params.get("epochs") if self.params else None
        if (epoch + 1) % self.every and epoch + 1 != last:
            return
        scores = self.evaluate()
        if logs is not None:
            logs.update({f"{self.prefix}{name}": value for name, value in scores.items()})


def _check_data(data, name):
    if isinstance(data, tf.data.Dataset):
        return data
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"`{name}` must be an (inputs, labels) pair or a tf.data.Dataset.")
    inputs, labels = data
    labels = np.asarray(labels)
    size = len(inputs) if not isinstance(inputs, dict) else len(next(iter(inputs.values())))
    if labels.ndim not in (1, 2) or labels.shape[0] != size:
        raise ValueError(
            f"`{name}` has {size} inputs but labels of shape {labels.shape}; they must match."
        )
    # Checked here, not at the first epoch's end (after training it) under another name.
    if labels.ndim == 2 and labels.shape[1] != 1:
        raise ValueError(
            f"`{name}` labels must be class labels of shape (n,) or (n, 1); got shape "
            f"{labels.shape}."
        )
    if labels.dtype == bool or labels.dtype.kind not in "iuf" or (
        labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels)))
    ):
        raise ValueError(
            f"`{name}` labels must be integer class labels; got dtype {labels.dtype}"
            + (" with non-integer values." if labels.dtype.kind == "f" else ".")
        )
    return inputs, labels
