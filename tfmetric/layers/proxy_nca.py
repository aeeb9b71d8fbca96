"""ProxyNCA loss head."""

import keras
from keras import ops

from tfmetric._src import validation
from tfmetric.layers import proxy_head

__all__ = ["ProxyNCA"]


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyNCA(proxy_head.ProxyHead):
    """ProxyNCA loss head.

    Embeddings and proxies are L2-normalised and compared by the squared
    euclidean distance `d(x, p) = ||x/|x| - p/|p|||^2` (in `[0, 4]`), scaled by
    `scale`. As in the paper, the positive proxy is not in the denominator:

        l(x, y) = -log( exp(-scale d(x, p_y)) / sum_{z != y} exp(-scale d(x, p_z)) )

    so values can be negative (the minimum is `-4 scale + log(C - 1)`).
    `scale` is the inverse of ProxyNCA++'s temperature (`1/9` there).

    Args:
        num_classes: Number of classes, `>= 2`.
        scale: Factor on the squared distances, `> 0`. Defaults to `9.0`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> head = tfmetric.layers.ProxyNCA(num_classes=3, scale=9.0)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> tuple(head(embeddings, np.array([0, 1, 2, 0])).shape)
    (4,)

    Reference:
        Movshovitz-Attias et al., "No Fuss Distance Metric Learning using
        Proxies", ICCV 2017; Teh et al., "ProxyNCA++", ECCV 2020 (scale).
    """

    def __init__(self, num_classes, scale=9.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.scale = validation.check_positive(scale, "scale")

    def loss_from_cosine(self, cosine, one_hot):
        logits = -self.scale * (2.0 - 2.0 * cosine)
        negatives = ops.where(ops.greater(one_hot, 0.0), -float("inf"), logits)
        return ops.logsumexp(negatives, axis=1) - ops.sum(logits * one_hot, axis=1)

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config
