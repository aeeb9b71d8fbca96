"""Pairwise distance helpers with TensorFlow Addons' names and conventions.

`pairwise_distance` and `angular_distance` reproduce
`tfa.losses.metric_learning`: the euclidean matrix has an exact zero (and a
zero gradient) on its diagonal and wherever two embeddings coincide; the
angular matrix is `1 - cos`, floored at `1e-16`, with its diagonal left as
computed (about `1e-16`). Both compute in float32 whatever the input dtype.
"""

from keras import ops

from tfmetric import distances as distances_lib
from tfmetric._src.autograph import as_written

__all__ = ["angular_distance", "pairwise_distance"]

# Addons floors the angular distance here, so that a sample is never at
# distance exactly 0 from itself.
_ANGULAR_FLOOR = 1e-16


@as_written
def pairwise_distance(feature, squared=False):
    """Euclidean distance matrix between the rows of `feature`.

    `output[i, j] = ||feature[i] - feature[j]||` (or its square). Small
    negative squared distances from round-off are set to 0, the diagonal is an
    exact 0, and the square root has a zero gradient at 0, so duplicate rows
    give finite gradients.

    Args:
        feature: Embeddings of shape `(batch, dim)`.
        squared: Return squared distances. Defaults to `False`.

    Returns:
        A float32 `(batch, batch)` matrix.

    Example:

    >>> d = tfmetric.addons.losses.metric_learning.pairwise_distance(
    ...     [[0.0, 0.0], [3.0, 4.0]])
    >>> np.asarray(d).tolist()
    [[0.0, 5.0], [5.0, 0.0]]
    """
    distance = distances_lib.SquaredEuclidean() if squared else distances_lib.Euclidean()
    return distance(feature)


@as_written
def angular_distance(feature):
    """Angular (cosine) distance matrix `1 - cos(feature[i], feature[j])`.

    Rows are L2-normalised (a zero row has distance 1 to everything, itself
    included), and the result is floored at `1e-16`, as in TensorFlow Addons:
    the diagonal is left as computed (about `1e-16`), not set to 0.

    Args:
        feature: Embeddings of shape `(batch, dim)`.

    Returns:
        A float32 `(batch, batch)` matrix.

    Example:

    >>> d = tfmetric.addons.losses.metric_learning.angular_distance(
    ...     [[1.0, 0.0], [0.0, 2.0]])
    >>> np.round(np.asarray(d), 6).tolist()
    [[0.0, 1.0], [1.0, 0.0]]
    """
    # `Cosine()(feature)` would set the diagonal to 0 (a zero row's too).
    return ops.maximum(distances_lib.Cosine()(feature, feature), _ANGULAR_FLOOR)
