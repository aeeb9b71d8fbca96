"""Proxy-Anchor loss head."""

import keras
from keras import ops

from tfmetric._src import numerics, validation
from tfmetric.layers import proxy_head

__all__ = ["ProxyAnchor"]


@keras.saving.register_keras_serializable(package="tfmetric")
class ProxyAnchor(proxy_head.ProxyHead):
    """Proxy-Anchor loss head.

    With `s(x, p)` the cosine between an embedding and a proxy, `P` all
    proxies, `P+` the proxies of the classes present in the batch, `X_p+` the
    batch samples of class `p` and `X_p-` the others:

        L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - margin)))
          + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + margin)))

    The loss is defined on the whole batch; the head returns it repeated for
    every sample (shape `(B,)`), so the batch mean is `L` (sample weights
    then only scale it). Every sample has its class proxy as positive, so a
    batch whose labels are all different is fine; terms without samples give
    exactly 0.

    Args:
        num_classes: Number of classes, `>= 2`.
        margin: Margin `delta >= 0`. Defaults to `0.1`.
        alpha: Scaling factor `> 0`. Defaults to `32.0`.
        **kwargs: Keras layer arguments (`name`, `dtype`, ...).

    Example:

    >>> head = tfmetric.layers.ProxyAnchor(num_classes=3, margin=0.1, alpha=32.0)
    >>> embeddings = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    >>> values = np.asarray(head(embeddings, np.array([0, 1, 2, 0])))
    >>> bool(np.allclose(values, values[0]))
    True

    Reference:
        Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.
    """

    def __init__(self, num_classes, margin=0.1, alpha=32.0, **kwargs):
        super().__init__(num_classes, **kwargs)
        # A cosine margin: cosines differ by at most 2.
        self.margin = validation.check_number(margin, "margin", maximum=2.0)
        self.alpha = validation.check_positive(alpha, "alpha")

    def loss_from_cosine(self, cosine, one_hot):
        positive = ops.greater(one_hot, 0.0)
        negative = ops.logical_not(positive)
        pos_terms = numerics.masked_logsumexp(
            -self.alpha * (cosine - self.margin), positive, axis=0, add_one=True
        )
        neg_terms = numerics.masked_logsumexp(
            self.alpha * (cosine + self.margin), negative, axis=0, add_one=True
        )
        with_positives = ops.cast(ops.any(positive, axis=0), "float32")
        loss = ops.sum(pos_terms * with_positives) / ops.maximum(ops.sum(with_positives), 1.0)
        loss = loss + ops.mean(neg_terms)
        return ops.ones_like(cosine[:, 0]) * loss

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, alpha=self.alpha)
        return config
