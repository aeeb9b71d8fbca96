"""Clustering quality of embeddings: NMI and AMI of k-means clusters."""

import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

from tfmetric import distances as distances_lib
from tfmetric._src import inputs, validation


def clustering_scores(embeddings, labels, distance="euclidean", seed=0):
    """NMI and AMI between the labels and a k-means clustering of the embeddings.

    k-means (scikit-learn, `n_init=1`, seeded) uses as many clusters as there
    are distinct labels, as pytorch-metric-learning's `AccuracyCalculator`
    does, on the distance's euclidean view of the embeddings
    (`Distance.euclidean_view`: the raw embeddings for euclidean distances,
    L2-normalised ones for `"cosine"` (spherical k-means), whitened ones for
    a Mahalanobis distance). A distance without such a view (manhattan,
    inner product, ...) is clustered by average-linkage agglomerative
    clustering of its `(n, n)` dissimilarity matrix, O(n²) memory.

    Args:
        embeddings: Embeddings, shape `(n, d)`.
        labels: Integer labels, shape `(n,)`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        seed: Seed of k-means, an integer in `[0, 4294967295]` (or `None`).
            Defaults to `0`.

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
    seed = validation.check_seed(seed)
    num_clusters = len(np.unique(labels))
    if num_clusters < 2:
        raise ValueError("`labels` must hold at least two classes for NMI/AMI.")
    view = distance.euclidean_view(embeddings)
    if view is not None:
        clusters = KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit_predict(
            np.asarray(view, np.float64)
        )
    else:
        # Average linkage ignores a constant shift: make the dissimilarities non-negative.
        matrix = np.asarray(distance.dissimilarity(embeddings), np.float64)
        matrix = matrix - matrix.min()
        np.fill_diagonal(matrix, 0.0)
        clusters = AgglomerativeClustering(
            n_clusters=num_clusters, metric="precomputed", linkage="average"
        ).fit_predict(matrix)
    return {
        "nmi": float(normalized_mutual_info_score(labels, clusters)),
        "ami": float(adjusted_mutual_info_score(labels, clusters)),
    }
