"""What an export needs to know: the embedder, its image input spec, the gallery.

These helpers validate everything before anything is written, so that bad input
(a model that is not an embedder, a gallery of the wrong width, ...) fails with
a clear error and leaves the output untouched.
"""

import os

import keras
import numpy as np

__all__ = ["Gallery", "ImageSpec", "load_gallery", "load_inputs", "resolve_embedder"]

SCALINGS = ("unit", "symmetric", "raw", "imagenet")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def load_keras_file(path):
    """Loads a `.keras` file (uncompiled), with tfmetric's classes registered."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`model` must be a keras.Model or a path to a .keras file; got {path!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`model` file {path!r} does not exist.")
    if not path.endswith(".keras"):
        raise ValueError(f"`model` must be a `.keras` file; got {path!r}.")
    # Importing tfmetric registers its serializable classes for the loader.
    import tfmetric  # noqa: F401

    return keras.saving.load_model(path, compile=False)


def resolve_embedder(model):
    """Returns the Keras model that maps one float input to `(batch, dim)` embeddings.

    A model with an `embedder` attribute (the tfmetric training models) is
    exported through that attribute, so the loss, head and optimizer stay out of
    the export.

    Args:
        model: A `keras.Model`, or the path of a `.keras` file.

    Returns:
        `(embedder, input_shape, embedding_dim)`: the model, its input shape
        without the batch dimension (a tuple, `None` for free dimensions) and
        the embedding size.

    Raises:
        FileNotFoundError: if `model` is a path that does not exist.
        ValueError: if the model is not an embedding model (several inputs or
            outputs, or an output that is not 2-D).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> _, shape, dim = tfmetric.export.resolve_embedder(model)
    >>> shape, dim
    ((3,), 2)
    """
    if not isinstance(model, keras.Model):
        model = load_keras_file(model)
    embedder = getattr(model, "embedder", None)
    if isinstance(embedder, keras.Model):
        model = embedder
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"`model` {model.name!r} is not an embedding model: its input shape is unknown. "
            "Export a functional or Sequential model (or a model with an `embedder`)."
        )
    if len(inputs) != 1:
        raise ValueError(
            f"`model` {model.name!r} is not an embedding model: it takes {len(inputs)} "
            "inputs; an embedder maps one input to (batch, dim) embeddings."
        )
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    if len(outputs) != 1:
        raise ValueError(
            f"`model` {model.name!r} is not an embedding model: it has {len(outputs)} "
            "outputs; an embedder has one output of shape (batch, dim)."
        )
    dtype = keras.backend.standardize_dtype(inputs[0].dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(
            f"`model` {model.name!r} is not an embedding model: its input dtype is {dtype}; "
            "an embedder takes float inputs."
        )
    output_shape = tuple(outputs[0].shape)
    if len(output_shape) != 2 or output_shape[1] is None:
        raise ValueError(
            f"`model` {model.name!r} is not an embedding model: its output shape is "
            f"{output_shape}; an embedder outputs (batch, dim) embeddings."
        )
    return model, tuple(inputs[0].shape[1:]), int(output_shape[1])


class ImageSpec:
    """How `embed_images` turns encoded images into model inputs.

    Images are decoded (JPEG, PNG, GIF or BMP) to `channels` channels, resized
    bilinearly to `height` × `width` (aspect ratio not kept), then scaled from
    `[0, 255]`:

    - `"unit"`: to `[0, 1]`;
    - `"symmetric"`: to `[-1, 1]`;
    - `"raw"`: kept in `[0, 255]` (for models that rescale inside);
    - `"imagenet"`: to `[0, 1]`, then standardised with the ImageNet mean and std.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        channels: 1 (grayscale) or 3 (RGB). Defaults to `3`.
        scaling: One of `"unit"`, `"symmetric"`, `"raw"`, `"imagenet"`.
            Defaults to `"unit"`.

    Example:

    >>> spec = tfmetric.export.ImageSpec.for_input_shape((32, 32, 3))
    >>> spec.to_json()
    {'height': 32, 'width': 32, 'channels': 3, 'scaling': 'unit'}
    """

    def __init__(self, height, width, channels=3, scaling="unit"):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
        if scaling not in SCALINGS:
            raise ValueError(f"`scaling` must be one of {list(SCALINGS)}; got {scaling!r}.")
        self.height, self.width = int(height), int(width)
        self.channels = int(channels)
        self.scaling = scaling

    @classmethod
    def for_input_shape(cls, input_shape, height=None, width=None, channels=None, scaling=None):
        """The spec of a channels-last image input, overriding any given field.

        Returns `None` when the input is not an image (not rank 3 without the
        batch) and nothing was overridden.

        Raises:
            ValueError: if fields are given for an input that cannot take images,
                or a free dimension has no value.
        """
        given = {"height": height, "width": width, "channels": channels, "scaling": scaling}
        if len(input_shape) != 3:
            if any(v is not None for v in given.values()):
                raise ValueError(
                    f"`image_spec` was given, but the model input shape {tuple(input_shape)} "
                    "is not an image (height, width, channels)."
                )
            return None
        model_h, model_w, model_c = input_shape
        if model_c is not None and model_c not in (1, 3):
            if any(v is not None for v in given.values()):
                raise ValueError(
                    f"The model input has {model_c} channels; `embed_images` needs 1 or 3."
                )
            return None
        height = height if height is not None else model_h
        width = width if width is not None else model_w
        if height is None or width is None:
            raise ValueError(
                f"The model input shape {tuple(input_shape)} has a free height or width; "
                "give the image `height` and `width`."
            )
        if model_c is not None and channels is not None and channels != model_c:
            raise ValueError(f"`channels` is {channels} but the model input has {model_c}.")
        channels = channels if channels is not None else (model_c or 3)
        return cls(height, width, channels, scaling or "unit")

    def preprocess(self, pixels):
        """Scales float32 pixels in `[0, 255]` (a tf tensor) as the spec says."""
        if self.scaling == "unit":
            return pixels / 255.0
        if self.scaling == "symmetric":
            return pixels / 127.5 - 1.0
        if self.scaling == "raw":
            return pixels
        mean = np.asarray(_IMAGENET_MEAN[: self.channels], "float32")
        std = np.asarray(_IMAGENET_STD[: self.channels], "float32")
        return (pixels / 255.0 - mean) / std

    def to_json(self):
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "scaling": self.scaling,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_json().items())
        return f"ImageSpec({args})"


def _load_npz(path, name):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{name}` must be a path to an .npz file; got {path!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{name}` file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"`{name}` file {path!r} is not a readable .npz: {error}") from None


def load_inputs(source, input_shape, name="representative"):
    """Loads model inputs from an `.npz` path (key `inputs`) or an array.

    Raises:
        ValueError: naming `name` if the inputs do not fit `input_shape`.
    """
    if source is None:
        return None
    if isinstance(source, (str, os.PathLike)):
        data = _load_npz(source, name)
        if "inputs" not in data:
            raise ValueError(f"`{name}` file {os.fspath(source)!r} has no `inputs` array.")
        source = data["inputs"]
    inputs = np.asarray(source)
    _check_inputs(inputs, input_shape, name)
    return inputs.astype("float32")


def _check_inputs(inputs, input_shape, name):
    if inputs.ndim != len(input_shape) + 1 or any(
        want is not None and want != got
        for want, got in zip(input_shape, inputs.shape[1:], strict=True)
    ):
        raise ValueError(
            f"`{name}` inputs have shape {inputs.shape}; the model takes (batch, "
            f"{', '.join(str(d) for d in input_shape)})."
        )
    if len(inputs) == 0:
        raise ValueError(f"`{name}` holds no inputs.")
    if not np.issubdtype(inputs.dtype, np.number):
        raise ValueError(f"`{name}` inputs must be numbers; got dtype {inputs.dtype}.")


class Gallery:
    """The reference set baked into `retrieve`: embeddings, ids and labels.

    Attributes:
        embeddings: float32 array `(n, dim)`.
        ids: array `(n,)` of int64 or str returned by `retrieve`; defaults to
            the row numbers.
        labels: optional int64 array `(n,)`, returned by `retrieve` when given.
        inputs: the model inputs the embeddings came from, if known.
    """

    def __init__(self, embeddings, ids=None, labels=None, inputs=None):
        self.embeddings = np.asarray(embeddings, "float32")
        n = len(self.embeddings)
        self.ids = np.arange(n, dtype="int64") if ids is None else _as_ids(ids, n, "ids")
        self.labels = None if labels is None else _as_ids(labels, n, "labels")
        if self.labels is not None and self.labels.dtype.kind not in "iu":
            raise ValueError(f"`gallery` `labels` must be integers; got dtype {self.labels.dtype}.")
        self.inputs = inputs

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
            embedder), and optionally `ids` and integer `labels` `(n,)`.
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
        data = dict(source) if isinstance(source, dict) else _load_npz(source, "gallery")
        if "embeddings" in data:
            embeddings = np.asarray(data["embeddings"])
            if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
                raise ValueError(
                    "`gallery` `embeddings` must be a 2-D float array (n, dim); got shape "
                    f"{embeddings.shape} and dtype {embeddings.dtype}."
                )
            inputs = None
        elif "inputs" in data:
            inputs = np.asarray(data["inputs"])
            _check_inputs(inputs, input_shape, "gallery")
            embeddings = embedder.predict(
                inputs.astype("float32"), batch_size=batch_size, verbose=0
            )
        else:
            raise ValueError("`gallery` must hold an `embeddings` or an `inputs` array.")
        gallery = Gallery(embeddings, data.get("ids"), data.get("labels"), inputs)
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
