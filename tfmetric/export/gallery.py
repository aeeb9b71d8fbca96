"""The gallery baked into the `retrieve` signatures: embeddings, ids, labels."""

import numpy as np

from tfmetric._src import inputs as checks
from tfmetric.export import inputs as inputs_lib

__all__ = ["Gallery", "load_gallery"]


class Gallery:
    """The reference set baked into `retrieve`: embeddings, ids and labels.

    With a `match_threshold` (e.g. from `tfmetric.index.calibrate`),
    `retrieve` also returns the match decision of each query: `match`, the
    label of the nearest gallery item when its distance is `<=` the
    threshold (similarity `>=`), else `unknown_label`, and `matched`, the
    boolean decision — `tfmetric.index.match` in the graph. With
    `l2_normalize`, the threshold applies to normalised embeddings.

    Attributes:
        embeddings: float32 array `(n, dim)`.
        ids: array `(n,)` of int64 or str returned by `retrieve`; defaults to
            the row numbers.
        labels: optional int64 array `(n,)`, returned by `retrieve` when given.
        inputs: the model inputs the embeddings came from, if known.
        match_threshold: optional float, the distance (or similarity)
            threshold of the match decision; needs `labels`.
        unknown_label: the `match` of an unmatched query. Defaults to `-1`.
    """

    def __init__(
        self, embeddings, ids=None, labels=None, inputs=None, match_threshold=None, unknown_label=-1
    ):
        self.embeddings = np.asarray(embeddings, "float32")
        n = len(self.embeddings)
        self.ids = np.arange(n, dtype="int64") if ids is None else _as_ids(ids, n, "ids")
        self.labels = None if labels is None else _as_ids(labels, n, "labels")
        if self.labels is not None and self.labels.dtype.kind not in "iu":
            raise ValueError(f"`gallery` `labels` must be integers; got dtype {self.labels.dtype}.")
        self.inputs = inputs
        self.match_threshold = None
        if match_threshold is not None:
            threshold = float(np.asarray(match_threshold))
            if not np.isfinite(threshold):
                raise ValueError(f"`match_threshold` must be finite; got {match_threshold!r}.")
            if self.labels is None:
                raise ValueError("`match_threshold` needs gallery `labels` to match queries to.")
            self.match_threshold = threshold
        if isinstance(unknown_label, bool) or not isinstance(unknown_label, (int, np.integer)):
            raise ValueError(f"`unknown_label` must be an integer; got {unknown_label!r}.")
        self.unknown_label = int(unknown_label)

    @classmethod
    def from_index(cls, index, match_threshold=None, unknown_label=-1):
        """The gallery of a `tfmetric.index` index: its embeddings, ids and labels.

        Args:
            index: A `tfmetric.index.ExactIndex` or `ApproximateIndex`
                (`retrieve` searches exactly).
            match_threshold: Optional threshold of the match decision, e.g.
                `tfmetric.index.calibrate(...).thresholds["precision"]`.
            unknown_label: The `match` of an unmatched query. Defaults to
                `-1`.

        Example:

        >>> index = tfmetric.index.ExactIndex()
        >>> index.add([[0.0, 1.0], [1.0, 0.0]], labels=[3, 4], ids=["a", "b"])
        >>> gallery = tfmetric.export.Gallery.from_index(index, match_threshold=0.5)
        >>> gallery.ids.tolist(), gallery.labels.tolist(), gallery.match_threshold
        (['a', 'b'], [3, 4], 0.5)
        """
        return cls(
            index.embeddings,
            ids=index.ids,
            labels=index.labels,
            match_threshold=match_threshold,
            unknown_label=unknown_label,
        )

    def __len__(self):
        return len(self.embeddings)


def _as_ids(values, n, key):
    values = np.asarray(values)
    if values.shape != (n,):
        raise ValueError(f"`gallery` `{key}` must have shape ({n},); got {values.shape}.")
    if values.dtype.kind in "iu":
        return values.astype("int64")
    if values.dtype.kind in "US":
        return values.astype(str)
    raise ValueError(f"`gallery` `{key}` must be integers or strings; got dtype {values.dtype}.")


def load_gallery(source, embedder, input_shape, embedding_dim, batch_size=256):
    """Loads a gallery and checks it against the embedder.

    Args:
        source: `None`, a `Gallery`, a dict of arrays, or an `.npz` path. It
            holds `embeddings` `(n, dim)` or `inputs` (embedded with the
            embedder), and optionally `ids` and integer `labels` `(n,)`, and
            a scalar `match_threshold` (and `unknown_label`).
        embedder: The Keras embedder, used when the gallery holds inputs.
        input_shape: The embedder input shape without the batch.
        embedding_dim: The embedder output size.
        batch_size: Batch size to embed gallery inputs.

    Returns:
        A `Gallery`, or `None` when `source` is `None`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming `gallery` for missing arrays or a dimension that
            differs from the model's.
    """
    if source is None or isinstance(source, Gallery):
        gallery = source
    else:
        data = dict(source) if isinstance(source, dict) else inputs_lib.load_npz(source, "gallery")
        if "embeddings" in data:
            embeddings = np.asarray(data["embeddings"])
            if embeddings.ndim != 2 or not checks.is_float_array_dtype(embeddings.dtype):
                raise ValueError(
                    "`gallery` `embeddings` must be a 2-D float array (n, dim); got shape "
                    f"{embeddings.shape} and dtype {embeddings.dtype}."
                )
            inputs = None
        elif "inputs" in data:
            inputs = np.asarray(data["inputs"])
            inputs_lib.check_inputs(inputs, input_shape, "gallery")
            embeddings = embedder.predict(
                inputs.astype("float32"), batch_size=batch_size, verbose=0
            )
        else:
            raise ValueError("`gallery` must hold an `embeddings` or an `inputs` array.")
        gallery = Gallery(
            embeddings,
            data.get("ids"),
            data.get("labels"),
            inputs,
            match_threshold=data.get("match_threshold"),
            unknown_label=int(data.get("unknown_label", -1)),
        )
    if gallery is None:
        return None
    if len(gallery) == 0:
        raise ValueError("`gallery` holds no embeddings.")
    if gallery.embeddings.shape[1] != embedding_dim:
        raise ValueError(
            f"`gallery` embeddings have dimension {gallery.embeddings.shape[1]} but the model "
            f"outputs {embedding_dim}."
        )
    if not np.all(np.isfinite(gallery.embeddings)):
        raise ValueError("`gallery` embeddings hold NaN or Inf values.")
    return gallery
