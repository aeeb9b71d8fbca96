"""Embedding models: the default small CNN and `keras.applications` backbones.

Every model built here takes the raw inputs of `trainers.datasets` (uint8
pixel values in `[0, 255]`, or float vectors) and returns float32 embeddings;
all preprocessing is inside the model, with built-in Keras layers only, so the
saved `.keras` file and the exported SavedModel need no custom code.
"""

import inspect
import os

import keras
import numpy as np

SMALL_CNN = "small_cnn"
MLP = "mlp"

# BatchNormalization momentum of every backbone built here. Keras' default,
# 0.99, averages the batch statistics over ~100 steps and starts from mean 0 /
# variance 1: after a 50-step epoch the moving statistics still hold ~60% of
# their initial values (and stacked layers compound the error), so the model
# evaluated in inference mode lags far behind the one that trains (held-out
# MAP@R 0.67 in inference mode against 0.97 with batch statistics after one
# epoch of the default run). A time constant of ~5 steps suits runs of a few
# hundred steps; applications built with their own momentum (ResNet,
# EfficientNet, ...) get the same.
BN_MOMENTUM = 0.8

# How each keras.applications family expects its inputs (see the family's
# `preprocess_input`); families not listed normalise inside the model and take
# pixel values in [0, 255].
_PREPROCESSING = {
    "resnet": "caffe",
    "resnet50": "caffe",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "densenet": "torch",
    "resnet_v2": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "inception_v3": "tf",
    "inception_resnet_v2": "tf",
    "xception": "tf",
    "nasnet": "tf",
}
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


def applications():
    """Maps lower-case names to the `keras.applications` model constructors."""
    return {
        name.lower(): fn
        for name, fn in vars(keras.applications).items()
        if callable(fn) and name[:1].isupper()
    }


def names():
    return [SMALL_CNN, MLP] + sorted(applications())


def _key(name):
    return str(name).lower().replace("-", "").replace("_", "")


def check(name, weights=None):
    """Raises a ValueError listing the valid names when `name` is not a backbone.

    `weights` (`--weights`) is checked too: only `keras.applications`
    backbones take weights, `"imagenet"` or an existing weights file.
    """
    if _key(name) not in {_key(n) for n in names()}:
        raise ValueError(f"Unknown `--backbone` {name!r}; expected one of {names()}.")
    if weights is None:
        return
    if _key(name) in (_key(SMALL_CNN), _key(MLP)):
        raise ValueError(
            f"`--weights={weights}` is for keras.applications backbones (resnet50, ...); "
            f"`--backbone={name}` starts from random weights: drop `--weights`."
        )
    if weights != "imagenet" and not os.path.isfile(weights):
        raise ValueError(
            f"`--weights` must be 'imagenet' or an existing weights file; {weights!r} does not "
            "exist."
        )


def _family(constructor):
    module = constructor.__module__.rsplit(".", 1)[-1]
    return _PREPROCESSING.get(module, "pixels")


def _fixed_pointwise(x, kernel, bias, name):
    """A frozen 1x1 convolution: a built-in, serialisable per-pixel affine map."""
    layer = keras.layers.Conv2D(kernel.shape[1], 1, name=name, trainable=False)
    out = layer(x)
    layer.set_weights([kernel.reshape(1, 1, *kernel.shape), bias])
    return out


def _application_inputs(x, channels, mode):
    """Pixel values [0, 255] with `channels` channels -> the family's input range, RGB."""
    if channels == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_minus1_1")(x)
    if mode == "torch":
        kernel = np.diag(1.0 / (255.0 * _IMAGENET_STD)).astype(np.float32)
        return _fixed_pointwise(x, kernel, -_IMAGENET_MEAN / _IMAGENET_STD, "imagenet_normalize")
    if mode == "caffe":
        kernel = np.eye(3, dtype=np.float32)[:, ::-1]  # RGB -> BGR
        return _fixed_pointwise(x, kernel, -_CAFFE_MEAN_BGR, "caffe_bgr_mean")
    return x


def set_batch_norm_momentum(model, momentum=BN_MOMENTUM):
    """Sets the momentum of every `BatchNormalization` layer in `model` (nested models too).

    Returns:
        The number of layers changed.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"`momentum` must be in [0, 1); got {momentum!r}.")
    count = 0
    for layer in getattr(model, "layers", ()):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
        else:
            count += set_batch_norm_momentum(layer, momentum)
    return count


def small_cnn(x, width=32):
    """A small convolutional trunk sized for 8x8 to 64x64 images."""
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for i, filters in enumerate((width, 2 * width)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}a")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}a")(x)
        x = keras.layers.ReLU(name=f"relu{i}a")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"conv{i}b")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}b")(x)
        x = keras.layers.ReLU(name=f"relu{i}b")(x)
        if min(x.shape[1], x.shape[2]) >= 4:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.layers.Dense(4 * width, activation="relu", name="fc")(x)


def build_embedder(
    input_shape,
    backbone=SMALL_CNN,
    embedding_dim=64,
    l2_normalize=True,
    weights=None,
    name="embedder",
):
    """Builds a Keras embedding model.

    Args:
        input_shape: Shape of one input: `(H, W, C)` images of pixel values in
            `[0, 255]`, or `(D,)` vectors.
        backbone: `"small_cnn"` (default, images), `"mlp"` (vectors) or a
            `keras.applications` model name, case-insensitive (e.g.
            `"resnet50"`, `"mobilenetv2"`, `"efficientnetb0"`).
        embedding_dim: Size of the embedding.
        l2_normalize: End with a unit-norm layer.
        weights: `None`, `"imagenet"` or a weights file, for applications.
        name: Model name.

    Returns:
        A functional `keras.Model` with float32 outputs `(batch, embedding_dim)`.

    Raises:
        ValueError: for an unknown backbone (listing the valid ones), a
            backbone that does not fit the input, or a bad `embedding_dim`.
    """
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"`--embedding_dim` must be a positive integer; got {embedding_dim!r}.")
    key = _key(backbone)
    apps = {_key(k): v for k, v in applications().items()}
    inputs = keras.Input(tuple(input_shape), name="inputs")
    is_image = len(input_shape) == 3
    if key == _key(MLP):
        x = keras.layers.Flatten(name="flatten")(inputs)
        if is_image:
            x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(x)
        for i in range(2):
            x = keras.layers.Dense(256, activation="relu", name=f"dense{i}")(x)
    elif not is_image:
        raise ValueError(
            f"`--backbone={backbone}` needs image inputs (H, W, C); the data are vectors of "
            f"shape {tuple(input_shape)}: use `--backbone={MLP}`."
        )
    elif key == _key(SMALL_CNN):
        x = small_cnn(inputs)
    elif key in apps:
        constructor = apps[key]
        height, width, channels = input_shape
        x = inputs
        if channels not in (1, 3):
            raise ValueError(f"`--backbone={backbone}` needs 1 or 3 channels; got {channels}.")
        if min(height, width) < 32:
            x = keras.layers.Resizing(max(32, height), max(32, width), name="upsample")(x)
        x = _application_inputs(x, channels, _family(constructor))
        kwargs = {"include_top": False, "weights": weights, "pooling": "avg"}
        kwargs["input_shape"] = tuple(x.shape[1:])
        if "include_preprocessing" in inspect.signature(constructor).parameters:
            kwargs["include_preprocessing"] = True
        try:
            trunk = constructor(**kwargs)
        except ValueError as error:
            raise ValueError(f"`--backbone={backbone}` with `--weights={weights}`: {error}") from None
        set_batch_norm_momentum(trunk)
        x = trunk(x)
    else:
        raise ValueError(f"Unknown `--backbone` {backbone!r}; expected one of {names()}.")
    x = keras.layers.Dense(embedding_dim, name="embedding", dtype="float32")(x)
    if l2_normalize:
        x = keras.layers.UnitNormalization(name="l2_normalize", dtype="float32")(x)
    return keras.Model(inputs, x, name=name)
