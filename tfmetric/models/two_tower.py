"""Two-tower model: a query tower and a candidate tower scored against each other in-batch."""

import os
import shutil

import keras
import numpy as np
from keras import ops

from tfmetric._src import files, validation
from tfmetric.layers.in_batch_logits import InBatchLogits
from tfmetric.models.checked_labels import CheckedLabelsMixin

__all__ = ["TwoTowerModel"]

_LOG_Q = "candidate_log_probability"


def _tower_input(tower, name):
    if not isinstance(tower, keras.Model):
        raise TypeError(
            f"`{name}` must be a Keras model with a defined input (e.g. built from "
            f"`keras.Input`); got {type(tower).__name__}."
        )
    try:
        inputs = tower.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs or len(inputs) != 1:
        raise ValueError(
            f"`{name}` must be a Keras model with exactly one defined input (build it from "
            "`keras.Input(shape)`)."
        )
    return tuple(inputs[0].shape[1:]), inputs[0].dtype


def _in_graph(tower, key, taken):
    """The layer that applies `tower` in the model's graph: itself, or a wrapper of another name.

    A functional graph needs unique layer names, and the model's inputs must be
    named after their keys (`"query"`, `"candidate"`): a tower of one of these
    names (or of the logits layer's, or of the other tower's) is called through
    a functional model holding only it, named `"<key>_tower"`.
    """
    if tower.name not in taken:
        return tower
    name, suffix = f"{key}_tower", 1
    while name in taken:
        name, suffix = f"{key}_tower_{suffix}", suffix + 1
    spec = tower.inputs[0]
    inputs = keras.Input(tuple(spec.shape[1:]), dtype=spec.dtype)
    return keras.Model(inputs, tower(inputs), name=name)


def _row_count(x):
    """The number of rows of in-memory inputs (arrays, or a dict/list of them), else `None`."""
    values = list(x.values()) if isinstance(x, dict) else x
    values = values if isinstance(values, (list, tuple)) else [values]
    shapes = [getattr(value, "shape", None) for value in values]
    if not shapes or any(shape is None or len(shape) == 0 for shape in shapes):
        return None
    rows = shapes[0][0]
    return rows if isinstance(rows, (int, np.integer)) else None


class _OneBatch(keras.callbacks.Callback):
    """Stops a `predict` at its second batch (in-batch logits do not concatenate).

    It stops the loop rather than raising in it: under JAX, an exception in
    the loop would leave the model's variables without their values.
    """

    def __init__(self):
        super().__init__()
        self.more = False

    def on_predict_batch_end(self, batch, logs=None):
        if batch >= 1:
            self.more = True
            self.model.stop_predicting = True


@keras.saving.register_keras_serializable(package="tfmetric")
class TwoTowerModel(CheckedLabelsMixin, keras.Model):
    """Two towers trained with an in-batch softmax: CLIP and recommender retrieval.

    A functional model: inputs `{"query": ..., "candidate": ...}` (and
    `"candidate_log_probability"` with `logq_correction=True`), each embedded
    by its own tower, scored by `tfmetric.layers.InBatchLogits` into the
    `(B, B)` logits of every query against every candidate of the batch; row
    `i`'s positive is candidate `i`. Train it with
    `tfmetric.losses.InBatchSoftmaxLoss` (`symmetric=True` for CLIP's
    symmetric InfoNCE); `y` are the candidate ids (for
    `remove_accidental_hits`) or omitted (`fit(x)` uses the row numbers).

    - CLIP (image, text): two modality towers, `normalize=True` and a learned
      temperature (initial 0.07, `1 / temperature` clamped at 100).
    - Recommenders (query, item): `logq_correction=True` adds the input
      `"candidate_log_probability"` (log of each candidate's sampling
      probability), subtracted from its logits (Yi et al. 2019).

    Under a `tf.distribute` strategy, each replica's in-batch softmax uses
    the candidates of its own share of the batch as negatives (as TensorFlow
    Recommenders' `Retrieval` task does): with R replicas, the loss is the
    mean of R in-batch losses over B/R pairs each, not one loss over the
    global batch's B pairs (which would need an all-gather of both towers'
    embeddings; CLIP's implementation gathers). Scale the global batch with
    the number of replicas to keep the negatives per query.

    `query_tower` and `candidate_tower` embed single inputs; `retrieve` ranks
    a candidate gallery for queries and `export_towers` writes a query and a
    candidate SavedModel, the query one with a `retrieve` signature over a
    candidate gallery.

    Args:
        query_tower: Keras model with one defined input, mapping queries to
            `(B, D)`.
        candidate_tower: Keras model with one defined input, mapping
            candidates to `(B, D)` (the same `D`).
        temperature: Positive (initial) temperature. Defaults to `0.07`.
        learn_temperature: Learn the temperature (CLIP). Defaults to `True`.
        max_logit_scale: Clamp of `1 / temperature`. Defaults to `100.0`.
        normalize: Cosine similarity (`True`) or inner product. Defaults to
            `True`.
        logq_correction: Add the `"candidate_log_probability"` input.
            Defaults to `False`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Example:

    >>> import keras
    >>> query = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> item = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.TwoTowerModel(query, item)
    >>> model.compile(optimizer="adam", loss=tfmetric.losses.InBatchSoftmaxLoss(symmetric=True))
    >>> x = {"query": np.ones((4, 3)), "candidate": np.ones((4, 5))}
    >>> tuple(model.predict(x, verbose=0).shape)
    (4, 4)

    Reference:
        Radford et al., "Learning Transferable Visual Models From Natural
        Language Supervision", ICML 2021; Yi et al., "Sampling-Bias-Corrected
        Neural Modeling for Large Corpus Item Recommendations", RecSys 2019.
    """

    def __init__(
        self,
        query_tower,
        candidate_tower,
        temperature=0.07,
        learn_temperature=True,
        max_logit_scale=100.0,
        normalize=True,
        logq_correction=False,
        **kwargs,
    ):
        query_shape, query_dtype = _tower_input(query_tower, "query_tower")
        candidate_shape, candidate_dtype = _tower_input(candidate_tower, "candidate_tower")
        if not isinstance(logq_correction, bool):
            raise TypeError(f"`logq_correction` must be a bool; got {logq_correction!r}.")
        logits_layer = InBatchLogits(
            temperature=temperature,
            learn_temperature=learn_temperature,
            max_logit_scale=max_logit_scale,
            normalize=normalize,
            name="logits",
        )
        inputs = {
            "query": keras.Input(query_shape, dtype=query_dtype, name="query"),
            "candidate": keras.Input(candidate_shape, dtype=candidate_dtype, name="candidate"),
        }
        if logq_correction:
            inputs[_LOG_Q] = keras.Input((), dtype="float32", name=_LOG_Q)
        taken = {*inputs, logits_layer.name}
        query_layer = _in_graph(query_tower, "query", taken)
        if candidate_tower is query_tower:  # a shared tower: one layer, called twice
            candidate_layer = query_layer
        else:
            candidate_layer = _in_graph(candidate_tower, "candidate", taken | {query_layer.name})
        query = query_layer(inputs["query"])
        candidate = candidate_layer(inputs["candidate"])
        if query.shape[-1] != candidate.shape[-1]:
            raise ValueError(
                f"The towers must embed into the same dimension; `query_tower` gives "
                f"{query.shape[-1]} and `candidate_tower` {candidate.shape[-1]}."
            )
        logits = logits_layer(query, candidate, inputs.get(_LOG_Q))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        self.query_tower = query_tower
        self.candidate_tower = candidate_tower
        self.logits_layer = logits_layer
        self.temperature = logits_layer.temperature
        self.learn_temperature = learn_temperature
        self.max_logit_scale = logits_layer.max_logit_scale
        self.normalize = normalize
        self.logq_correction = logq_correction

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y is None and y_pred is not None:
            y = ops.arange(ops.shape(y_pred)[0])
        return super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """The `(N, N)` in-batch logits of `N` query-candidate pairs given as one batch.

        The logits score each query against the candidates of its own batch,
        so they exist for one batch only: arrays are predicted as a single
        batch of all their rows unless `batch_size` is given, and a
        `batch_size` below the number of rows, or a dataset of more than one
        batch, is a `ValueError` (the logits of several batches do not form
        one matrix). For embeddings, call `query_tower.predict` and
        `candidate_tower.predict`; to rank a gallery, `retrieve`.

        Args:
            x: `{"query": ..., "candidate": ...}` inputs (arrays), or a
                dataset of one batch.
            batch_size: At least the number of rows. Defaults to `None`: all
                rows.
            verbose: As `keras.Model.predict`. Defaults to `"auto"`.
            steps: As `keras.Model.predict`. Defaults to `None`.
            callbacks: As `keras.Model.predict`. Defaults to `None`.

        Returns:
            The logits `(N, N)`.
        """
        rows = _row_count(x)
        if rows is not None:
            if batch_size is None:
                batch_size = max(rows, 1)
            elif rows > batch_size:
                raise ValueError(
                    f"`batch_size` ({batch_size}) is below the {rows} rows of `x`: "
                    "TwoTowerModel.predict returns the in-batch logits of one batch. Pass "
                    "`batch_size=None` (one batch of all rows), or embed with `query_tower` "
                    "and `candidate_tower` (`retrieve` ranks a gallery)."
                )
        one_batch = _OneBatch()
        callbacks = list(callbacks or []) + [one_batch]
        try:
            logits = super().predict(
                x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
            )
        except ValueError:
            # Batches of different sizes do not concatenate: the error below says why.
            if not one_batch.more:
                raise
        if one_batch.more:
            raise ValueError(
                "TwoTowerModel.predict returns the in-batch logits of one batch; `x` gave "
                "more than one batch. Give a dataset of one batch, or embed with `query_tower` "
                "and `candidate_tower` (`retrieve` ranks a gallery)."
            )
        return logits

    def _embed(self, tower, inputs, batch_size):
        embeddings = np.asarray(tower.predict(inputs, batch_size=batch_size, verbose=0), "float32")
        if self.normalize:
            norms = np.sqrt(np.maximum(np.sum(embeddings**2, axis=1, keepdims=True), 1e-12))
            embeddings = embeddings / norms
        return embeddings

    def retrieve(self, queries, candidates, k=10, batch_size=256):
        """The top-`k` candidates of each query: `(scores, indices)`, best first.

        Queries go through `query_tower`, candidates through
        `candidate_tower`; the score is the model's similarity (cosine or
        inner product, without temperature). Exact search.

        Args:
            queries: Query inputs `(n, ...)`.
            candidates: Candidate gallery inputs `(m, ...)`.
            k: Candidates per query (capped at `m`). Defaults to `10`.
            batch_size: Batch size of the towers. Defaults to `256`.

        Returns:
            `(scores, indices)`: numpy arrays `(n, k)`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"`k` must be a positive integer; got {k!r}.")
        query = self._embed(self.query_tower, queries, batch_size)
        gallery = self._embed(self.candidate_tower, candidates, batch_size)
        k = min(int(k), len(gallery))
        scores = query @ gallery.T
        # Stable sort keeps the lower gallery row first among ties.
        indices = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, indices, axis=1), indices

    def export_towers(self, query_path, candidate_path, candidates=None, ids=None, top_k=10):
        """Writes a query-tower and a candidate-tower SavedModel (atomically).

        Both have a `serving_default` signature returning embeddings
        (L2-normalised when `normalize=True`). With `candidates`, the query
        SavedModel also gets a `retrieve` signature returning the `top_k`
        gallery `ids` and their scores for a batch of queries, over the
        candidates embedded now by the candidate tower.

        Args:
            query_path: Directory of the query SavedModel (must not exist).
            candidate_path: Directory of the candidate SavedModel (must not
                exist).
            candidates: Optional candidate gallery inputs `(m, ...)`.
            ids: Optional ids `(m,)` (integers or strings) of the candidates.
                Defaults to the row numbers.
            top_k: Candidates returned by `retrieve`. Defaults to `10`.

        Returns:
            `{"query": signature names, "candidate": signature names}`.
        """
        validation.check_tensorflow_backend("`TwoTowerModel.export_towers`")
        from tfmetric.export import Gallery, save_embedder

        for name, path in (("query_path", query_path), ("candidate_path", candidate_path)):
            if os.path.exists(path):
                raise ValueError(f"`{name}` already exists: {os.fspath(path)!r}.")
        gallery = None
        if candidates is not None:
            gallery = Gallery(self._embed(self.candidate_tower, candidates, 256), ids=ids)
        towers = (
            ("query", query_path, self.query_tower, gallery),
            ("candidate", candidate_path, self.candidate_tower, None),
        )
        signatures = {}
        for key, path, tower, tower_gallery in towers:
            path = os.fspath(path)
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            scratch = files.make_temporary_directory(parent)
            try:
                target = os.path.join(scratch, "model")
                signatures[key] = save_embedder(
                    target,
                    tower,
                    tuple(tower.inputs[0].shape[1:]),
                    gallery=tower_gallery,
                    distance="inner_product",
                    top_k=top_k,
                    l2_normalize=bool(self.normalize),
                )
                os.replace(target, path)
                files.give_normal_modes(path)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return signatures

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "query_tower": keras.saving.serialize_keras_object(self.query_tower),
            "candidate_tower": keras.saving.serialize_keras_object(self.candidate_tower),
            "temperature": self.temperature,
            "learn_temperature": self.learn_temperature,
            "max_logit_scale": self.max_logit_scale,
            "normalize": self.normalize,
            "logq_correction": self.logq_correction,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("query_tower", "candidate_tower"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
