"""Clustering quality of embeddings: NMI and AMI of k-means clusters."""

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from tfmetric import distances as distances_lib
from tfmetric._src import inputs


def clustering_scores(embeddings, labels, distance="euclidean", seed=0):
    """NMI and AMI between the labels and a k-means clustering of the embeddings.

    k-means (scikit-learn, `n_init=1`, seeded) uses as many clusters as there
    are distinct labels, as pytorch-metric-learning's `AccuracyCalculator`
    does. For the `"cosine"` distance the embeddings are L2-normalised first
    (spherical k-means); other distances cluster the raw embeddings.

    Args:
        embeddings: Embeddings, shape `(n, d)`.
        labels: Integer labels, shape `(n,)`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        seed: Seed of k-means. Defaults to `0`.

    Returns:
        `{"nmi": float, "ami": float}` (arithmetic-mean normalisation, the
        scikit-learn default).

    Example:

    >>> x = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> tfmetric.metrics.clustering_scores(x, np.array([3, 3, 7, 7]))
    {'nmi': 1.0, 'ami': 1.0}

    Reference:
        Musgrave, Belongie, Lim. "A Metric Learning Reality Check". ECCV 2020.
    """
    embeddings = inputs.check_embedding_array(embeddings, "embeddings")
    labels = inputs.check_label_array(labels, "labels", embeddings.shape[0], "embeddings")
    distance = distances_lib.get(distance)
    if isinstance(distance, distances_lib.Cosine):
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        embeddings = embeddings / np.maximum(norms, 1e-12)
    num_clusters = len(np.unique(labels))
    if num_clusters < 2:
        raise ValueError("`labels` must hold at least two classes for NMI/AMI.")
    clusters = KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(
        embeddings.astype(np.float64)
    )
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
    }
