"""Softmax heads on normalised embeddings: ArcFace, CosFace, sub-center ArcFace, NormSoftmax.

Each head keeps trainable class proxies `W`, L2-normalises them and the
embeddings, and computes `cos(theta_j) = <x / |x|, W_j / |W_j|>`. A margin is
applied to the target class only, the logits are scaled, and the per-sample
loss is the softmax cross-entropy. Everything is computed in float32.
"""

import math

import keras
from keras import ops

from tfmetric._src import numerics, validation
from tfmetric.layers import proxy_head

__all__ = ["ArcFace", "CosFace", "NormalizedSoftmax", "SubCenterArcFace"]

# Only matters at |cos| = 1 exactly: float32 resolves 1 - cos² no finer than ~1e-7.
_SIN_EPSILON = 1e-12


def _check_angular_margin(margin):
    margin = validation.check_number(margin, "margin")
    if margin >= math.pi / 2:
        raise ValueError(f"`margin` must be < pi / 2 (an angle in radians); got {margin!r}.")
    return margin


def additive_angular_logits(cosine, one_hot, margin, scale, easy_margin=False):
    """ArcFace logits: `s * cos(theta_y + m)` for the target class, `s * cos(theta_j)` otherwise.

    `cos(theta + m)` is only decreasing in `theta` up to `theta = pi - m`. Past
    that point the target logit falls back to `cos(theta) - m * sin(m)` (the
    official implementation's rule), so the target logit keeps decreasing
    with the angle; with `easy_margin=True` the margin is applied only where
    `cos(theta) > 0`.
    """
    cosine = ops.convert_to_tensor(cosine)
    one_hot = ops.cast(one_hot, cosine.dtype)
    target = ops.sum(cosine * one_hot, axis=1)
    sine = ops.sqrt(ops.maximum(1.0 - ops.square(target), _SIN_EPSILON))
    with_margin = target * math.cos(margin) - sine * math.sin(margin)
    if easy_margin:
        with_margin = ops.where(target > 0.0, with_margin, target)
    else:
        threshold = math.cos(math.pi - margin)
        with_margin = ops.where(
            target > threshold, with_margin, target - math.sin(math.pi - margin) * margin
        )
    delta = ops.expand_dims(with_margin - target, 1)
    return scale * (cosine + one_hot * delta)


@keras.saving.register_keras_serializable(package="tfmetric")
class ArcFace(proxy_head.ProxyHead):
    """ArcFace (additive angular margin) loss head.

    The target logit is `s * cos(theta_y + m)` and the other logits
    `s * cos(theta_j)`, where `theta_j` is the angle between the embedding and
    the proxy of class `j`; the per-sample loss is the softmax cross-entropy.
    Past `theta_y = pi - m`, where `cos(theta + m)` would increase again, the
    target logit is `cos(theta_y) - m * sin(m)` (scaled), so it decreases
    monotonically with the angle.

    Args:
        num_classes: Number of classes, `>= 2`.
        margin: Additive angular margin `m` in radians, in `[0, pi / 2)`.
            Defaults to `0.5`.
        scale: Logit scale `s > 0`. Defaults to `64.0`.
        easy_margin: Apply the margin only where `cos(theta_y) > 0` instead of
            the threshold rule. Defaults to `False`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Call arguments:
        embeddings: `(B, D)` embeddings. labels: integer labels `(B,)`.

    Returns:
        Per-sample float32 losses `(B,)`.

    Example:

    >>> head = tfmetric.layers.ArcFace(num_classes=3)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> values = head(embeddings, np.array([0, 1, 2, 0]))
    >>> tuple(values.shape)
    (4,)

    Reference:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face
        Recognition", CVPR 2019.
    """

    def __init__(self, num_classes, margin=0.5, scale=64.0, easy_margin=False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.margin = _check_angular_margin(margin)
        self.scale = validation.check_positive(scale, "scale")
        self.easy_margin = validation.check_bool(easy_margin, "easy_margin")

    def loss_from_cosine(self, cosine, one_hot):
        logits = additive_angular_logits(cosine, one_hot, self.margin, self.scale, self.easy_margin)
        return numerics.cross_entropy(logits, one_hot)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, scale=self.scale, easy_margin=self.easy_margin)
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class SubCenterArcFace(ArcFace):
    """Sub-center ArcFace: `centers` proxies per class, the closest one is used.

    The cosine of class `j` is the largest cosine between the embedding and the
    `centers` sub-centers of class `j`; the ArcFace margin and scale then apply
    as in `tfmetric.layers.ArcFace`. Noisy samples can sit on a non-dominant
    sub-center instead of pulling the class's main center.

    Args:
        num_classes: Number of classes, `>= 2`.
        centers: Sub-centers per class, `>= 1`. Defaults to `3`.
        margin: Additive angular margin in radians, in `[0, pi / 2)`.
            Defaults to `0.5`.
        scale: Logit scale `> 0`. Defaults to `64.0`.
        easy_margin: See `ArcFace`. Defaults to `False`.
        **kwargs: Keras layer arguments.

    Example:

    >>> head = tfmetric.layers.SubCenterArcFace(num_classes=3, centers=2)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> tuple(head(embeddings, np.array([0, 1, 2, 0])).shape)
    (4,)
    >>> tuple(head.proxies.shape)
    (6, 8)

    Reference:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
        Large-Scale Noisy Web Faces", ECCV 2020.
    """

    def __init__(self, num_classes, centers=3, margin=0.5, scale=64.0, easy_margin=False, **kwargs):
        super().__init__(num_classes, margin=margin, scale=scale, easy_margin=easy_margin, **kwargs)
        self.centers = validation.check_int(centers, "centers", 1)

    def get_config(self):
        config = super().get_config()
        config["centers"] = self.centers
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class CosFace(proxy_head.ProxyHead):
    """CosFace (large margin cosine) loss head.

    The target logit is `s * (cos(theta_y) - m)`, the others `s * cos(theta_j)`;
    the per-sample loss is the softmax cross-entropy.

    Args:
        num_classes: Number of classes, `>= 2`.
        margin: Cosine margin `m >= 0`. Defaults to `0.35`.
        scale: Logit scale `s > 0`. Defaults to `64.0`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> head = tfmetric.layers.CosFace(num_classes=3, margin=0.35, scale=64.0)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> values = head(embeddings, np.array([0, 1, 2, 0]))
    >>> bool(np.all(np.isfinite(values)))
    True

    Reference:
        Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
        Recognition", CVPR 2018.
    """

    def __init__(self, num_classes, margin=0.35, scale=64.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        # A cosine margin: cosines differ by at most 2.
        self.margin = validation.check_number(margin, "margin", maximum=2.0)
        self.scale = validation.check_positive(scale, "scale")

    def loss_from_cosine(self, cosine, one_hot):
        logits = self.scale * (cosine - self.margin * one_hot)
        return numerics.cross_entropy(logits, one_hot)

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, scale=self.scale)
        return config


@keras.saving.register_keras_serializable(package="tfmetric")
class NormalizedSoftmax(proxy_head.ProxyHead):
    """Normalized softmax (NormSoftmax) loss head.

    The logits are `cos(theta_j) / temperature`, with no margin; the
    per-sample loss is the softmax cross-entropy.

    Args:
        num_classes: Number of classes, `>= 2`.
        temperature: Softmax temperature `> 0`. Defaults to `0.05`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> head = tfmetric.layers.NormalizedSoftmax(num_classes=3, temperature=0.05)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> tuple(head(embeddings, np.array([0, 1, 2, 0])).shape)
    (4,)

    Reference:
        Zhai & Wu, "Classification is a Strong Baseline for Deep Metric
        Learning", BMVC 2019 (arXiv:1811.12649, 2018).
    """

    def __init__(self, num_classes, temperature=0.05, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.temperature = validation.check_positive(temperature, "temperature")

    def loss_from_cosine(self, cosine, one_hot):
        return numerics.cross_entropy(cosine / self.temperature, one_hot)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = self.temperature
        return config
