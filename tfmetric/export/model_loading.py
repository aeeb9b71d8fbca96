"""The model to export: loading a `.keras` file, its embedder, the distance it was trained with.

Everything here validates before anything is written, so that a model that is
not an embedder fails with a clear error and leaves the output untouched.
"""

import json
import os
import zipfile

import keras

from tfmetric import distances as distances_lib
from tfmetric._src import files

__all__ = [
    "float32_copy",
    "load_keras_file",
    "mixed_precision_policy",
    "record_image_scaling",
    "recorded_image_scaling",
    "resolve_embedder",
    "saved_loss",
    "trained_distance",
]


def load_keras_file(path):
    """Loads a `.keras` file (uncompiled), with tfmetric's classes registered."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`model` must be a keras.Model or a path to a .keras file; got {path!r}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"`model` {path!r} is a directory, not a .keras file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`model` file {path!r} does not exist.")
    if not path.endswith(".keras"):
        raise ValueError(f"`model` must be a `.keras` file; got {path!r}.")
    return files.load_keras_file(path, "model", compile=False)


def saved_loss(path):
    """The loss of a `.keras` file's compile config (what `trained_distance` reads), or `None`.

    `load_keras_file` does not compile the model, so the loss is read here.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        loss = (config.get("compile_config") or {}).get("loss")
        if not isinstance(loss, dict):
            return None
        return keras.saving.deserialize_keras_object(loss)
    except Exception:  # An unregistered or built-in loss: it has no distance to report.
        return None


# What tfmetric adds to a `.keras` archive (Keras ignores other files in it).
INFO_FILENAME = "tfmetric.json"


def record_image_scaling(path, scaling):
    """Records in a `.keras` file how its model expects image pixels, for the export.

    `tfmetric.export.export_for_serving` (and `python -m export`) then give
    `embed_images` this scaling by default, instead of `"unit"`. The file is
    rewritten atomically with an extra `tfmetric.json` entry; Keras ignores it
    when loading.

    Args:
        path: A `.keras` file.
        scaling: One of `tfmetric.export.ImageSpec`'s scalings: `"unit"`,
            `"symmetric"`, `"raw"` (the model takes 0..255 and rescales
            inside) or `"imagenet"`.

    Example:

    >>> import keras, os, tempfile
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten()])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> model.save(path)
    >>> tfmetric.export.record_image_scaling(path, "raw")
    >>> tfmetric.export.recorded_image_scaling(path)
    'raw'
    """
    from tfmetric.export.image_spec import SCALINGS

    if scaling not in SCALINGS:
        raise ValueError(f"`scaling` must be one of {list(SCALINGS)}; got {scaling!r}.")
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"`path` {path!r} is not a .keras (zip) archive.")
    with zipfile.ZipFile(path) as source:
        info = _read_info(source)
        info["image_scaling"] = scaling
        with files.atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as target:
            for item in source.infolist():
                if item.filename != INFO_FILENAME:
                    target.writestr(item, source.read(item.filename))
            target.writestr(INFO_FILENAME, json.dumps(info, sort_keys=True))


def _read_info(archive):
    try:
        info = json.loads(archive.read(INFO_FILENAME))
    except (KeyError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def recorded_image_scaling(path):
    """The image scaling recorded in a `.keras` file by `record_image_scaling`, or `None`."""
    from tfmetric.export.image_spec import SCALINGS

    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            scaling = _read_info(archive).get("image_scaling")
    except (OSError, zipfile.BadZipFile):
        return None
    return scaling if scaling in SCALINGS else None


def _is_mixed(name):
    return isinstance(name, str) and name.startswith("mixed_")


def _policy_names(layer, seen=None):
    """The dtype policy names of `layer` and of every layer nested in it."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    yield getattr(getattr(layer, "dtype_policy", None), "name", None)
    for sublayer in getattr(layer, "layers", None) or ():
        yield from _policy_names(sublayer, seen)


def _float32_config(config):
    """The config with every mixed dtype policy replaced by `"float32"`."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and _is_mixed(
            (config.get("config") or {}).get("name")
        ):
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {
            key: "float32" if key == "dtype" and _is_mixed(value) else _float32_config(value)
            for key, value in config.items()
        }
    if isinstance(config, (list, tuple)):
        return [_float32_config(value) for value in config]
    return config


def mixed_precision_policy(model):
    """The mixed precision policy of `model`'s layers (`"mixed_bfloat16"`, ...), or `None`."""
    return next((name for name in _policy_names(model) if _is_mixed(name)), None)


def float32_copy(model):
    """A float32 copy of a mixed-precision model, with the same weights.

    TFLite's builtin kernels have no bfloat16 (and few float16) versions, and
    TF Serving clients send float32: an export of a `mixed_float16` or
    `mixed_bfloat16` model is made from this copy. Mixed precision keeps its
    variables in float32, so the weights are copied exactly; only the compute
    dtype changes.

    Args:
        model: A `keras.Model` (a tfmetric training model or an embedder).

    Returns:
        `model` itself when it uses no mixed policy, else a new model of the
        same architecture in float32 holding the same weights.

    Raises:
        ValueError: if the copy cannot be rebuilt from the model's config.

    Example:

    >>> import keras
    >>> keras.mixed_precision.set_global_policy("mixed_bfloat16")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> keras.mixed_precision.set_global_policy("float32")
    >>> copy = tfmetric.export.float32_copy(model)
    >>> copy.layers[0].dtype_policy.name, copy.layers[0].compute_dtype
    ('float32', 'float32')
    >>> bool(np.all(copy.layers[0].kernel.numpy() == model.layers[0].kernel.numpy()))
    True
    """
    policy = mixed_precision_policy(model)
    if policy is None:
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # for layers whose config has no dtype
    try:
        config = _float32_config(keras.saving.serialize_keras_object(model))
        copy = keras.saving.deserialize_keras_object(config)
        copy.set_weights(model.get_weights())
    except Exception as error:  # Any rebuild failure: the message says what and why.
        reason = " ".join(str(error).split())[:300]
        raise ValueError(
            f"`model` {model.name!r} uses the {policy!r} policy; the export needs a float32 copy "
            f"of it, which could not be rebuilt from its config ({type(error).__name__}: "
            f"{reason}). Implement `get_config` for its custom layers, or rebuild it under the "
            "float32 policy and load its weights before exporting."
        ) from None
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return copy


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
    if isinstance(embedder, keras.layers.Layer):
        model = embedder if _has_inputs(embedder) else _on_model_input(embedder, model)
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


def final_unit_normalization(embedder):
    """Splits a final `keras.layers.UnitNormalization` off an embedder.

    Keras' layer computes `x * min(rsqrt(|x|^2), 1e12)`; converted to TFLite
    (every variant), a zero embedding comes out NaN. The export applies the
    same normalisation itself (`tf.math.l2_normalize` with `epsilon=1e-24`,
    the same values), which TFLite runs as its `L2_NORMALIZATION` kernel: a
    zero embedding stays zero. Only a layer that produces the embedder's
    output, over the feature axis, is split off.

    Returns:
        `(body, True)`, `body` the embedder without its last layer, or
        `(embedder, False)`.
    """
    layers = getattr(embedder, "layers", None)
    if not layers or not _has_inputs(embedder) or len(embedder.outputs) != 1:
        return embedder, False
    last = layers[-1]
    if not isinstance(last, keras.layers.UnitNormalization):
        return embedder, False
    axes = list(last.axis) if isinstance(last.axis, (list, tuple)) else [last.axis]
    if axes not in ([-1], [1]) or last.output is not embedder.outputs[0]:
        return embedder, False
    return keras.Model(embedder.inputs[0], last.input, name=embedder.name), True


def _has_inputs(layer):
    try:
        return bool(layer.inputs)
    except (AttributeError, ValueError):
        return False


def _on_model_input(embedder, model):
    """A functional model of an embedder without its own `keras.Input` (a bare layer, a
    subclassed model), on the input of the twin model that holds it."""
    if not _has_inputs(model):
        return embedder
    spec = model.inputs[0]
    inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype, name="inputs")
    return keras.Model(inputs, embedder(inputs), name=embedder.name)


def is_siamese(model):
    """Whether `model` is a `tfmetric.models.SiameseModel` (pairs in, one score per pair out)."""
    from tfmetric.models import SiameseModel

    return isinstance(model, SiameseModel)


def trained_distance(model, loss=None):
    """The distance the embeddings of `model` were trained with, and where it came from.

    In order: a Siamese model's learned-distance scorer
    (`tfmetric.layers.WeightedL1`, `Mahalanobis`: the scorer's distance view,
    with its trained weights); a
    Siamese model's `distance` (it computes the pair values the loss sees); the
    `distance` of the compiled loss (`TripletMarginLoss(distance="cosine")`
    trains a `TripletModel`'s embeddings with the cosine distance whatever the
    model's own `distance`); the model's `distance` attribute; else cosine.

    Args:
        model: The `keras.Model` given to the export.
        loss: The training loss, when `model` is not compiled with it (for a
            `.keras` file, `saved_loss(path)`). Defaults to `model.loss`.

    Returns:
        `(distance, source)`: a `tfmetric.distances.Distance` and one of
        `"scorer"`, `"model"`, `"loss"`, `"default"`.

    Example:

    >>> import keras
    >>> embedder = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> model = tfmetric.models.TripletModel(embedder)  # distance="euclidean"
    >>> model.compile(loss=tfmetric.losses.TripletMarginLoss(distance="cosine"))
    >>> tfmetric.export.trained_distance(model)
    (Cosine(), 'loss')
    """
    if is_siamese(model):
        scorer = model.scorer
        if scorer is not None and callable(getattr(scorer, "as_distance", None)):
            return scorer.as_distance(), "scorer"
        return distances_lib.get(model.distance), "model"
    if loss is None and getattr(model, "compiled", False):
        loss = getattr(model, "loss", None)
    loss_distance = getattr(loss, "distance", None)
    if loss_distance is not None:
        try:
            return distances_lib.get(loss_distance), "loss"
        except ValueError:
            pass
    if getattr(model, "distance", None) is not None:
        return distances_lib.get(model.distance), "model"
    return distances_lib.get("cosine"), "default"
