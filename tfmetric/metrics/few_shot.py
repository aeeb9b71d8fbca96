"""N-way k-shot classification accuracy of embeddings (few-shot protocol)."""

import numpy as np

from tfmetric import distances as distances_lib
from tfmetric._src import centring, inputs, validation

# Most elements of one chunk of episodes: float64 rows and blocks of a translation-invariant
# distance, else the (chunk queries) x (chunk supports) x dimensions pairs of the distance.
_BLOCK_ELEMENTS = 1 << 22


def n_way_k_shot_accuracy(
    embeddings,
    labels,
    n_way=20,
    k_shot=1,
    episodes=1000,
    seed=0,
    distance="euclidean",
    queries_per_class=1,
):
    """Mean accuracy of nearest-support classification over random episodes.

    An episode draws `n_way` distinct classes, then for each class `k_shot`
    support and `queries_per_class` query embeddings (distinct samples, all
    draws uniform without replacement, from a `numpy` generator seeded with
    `seed`). Each query is assigned the class of its nearest support among the
    `n_way * k_shot` supports; it is correct only when the nearest support of
    its own class is strictly closer than every other class's (ties count as
    errors). `n_way=20, k_shot=1` is the 20-way one-shot protocol of Koch et
    al.; only classes with at least `k_shot + queries_per_class` samples are
    drawn.

    Args:
        embeddings: Embeddings, shape `(n, d)`.
        labels: Integer labels, shape `(n,)`.
        n_way: Classes per episode. Defaults to `20`.
        k_shot: Supports per class. Defaults to `1`.
        episodes: Number of episodes. Defaults to `1000`.
        seed: Seed of the episode sampler, an integer >= 0 (or `None`:
            unseeded). Defaults to `0`.
        distance: Name, config or `tfmetric.distances.Distance`. Defaults to
            `"euclidean"`.
        queries_per_class: Queries per class and episode. Defaults to `1`.

    Returns:
        `(accuracy, ci95)`: the mean episode accuracy and the half-width of
        its 95% normal confidence interval, `1.96 * std / sqrt(episodes)`
        (sample standard deviation of the episode accuracies; 0 for one
        episode).

    Raises:
        ValueError: when fewer than `n_way` classes have enough samples, or
            for bad arguments.

    Example:

    >>> x = np.array([[0.0], [0.1], [5.0], [5.1], [9.0], [9.1]])
    >>> y = np.array([0, 0, 1, 1, 2, 2])
    >>> tfmetric.metrics.n_way_k_shot_accuracy(x, y, n_way=3, k_shot=1, episodes=5)
    (1.0, 0.0)

    Reference:
        Koch, Zemel, Salakhutdinov. "Siamese Neural Networks for One-shot Image
        Recognition". ICML Deep Learning Workshop, 2015.
    """
    embeddings = inputs.check_embedding_array(embeddings, "embeddings")
    labels = inputs.check_label_array(labels, "labels", embeddings.shape[0], "embeddings")
    n_way = validation.check_int(n_way, "n_way")
    k_shot = validation.check_int(k_shot, "k_shot")
    episodes = validation.check_int(episodes, "episodes")
    queries_per_class = validation.check_int(queries_per_class, "queries_per_class")
    seed = validation.check_seed(seed, maximum=None)
    if n_way < 2:
        raise ValueError(f"`n_way` must be >= 2; got {n_way}.")
    distance = distances_lib.get(distance)
    per_class = k_shot + queries_per_class
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= per_class]
    if len(eligible) < n_way:
        raise ValueError(
            f"`n_way={n_way}` needs {n_way} classes with at least k_shot + queries_per_class "
            f"= {per_class} samples; `labels` has {len(eligible)}."
        )
    members = {c: np.flatnonzero(labels == c) for c in eligible}
    rng = np.random.default_rng(seed)
    picks = np.empty((episodes, n_way, per_class), np.int64)
    for e in range(episodes):
        for j, c in enumerate(rng.choice(eligible, n_way, replace=False)):
            picks[e, j] = rng.choice(members[c], per_class, replace=False)
    supports = picks[:, :, :k_shot].reshape(episodes, n_way * k_shot)
    queries = picks[:, :, k_shot:].reshape(episodes, n_way * queries_per_class)
    support_class = np.repeat(np.arange(n_way), k_shot)
    query_class = np.repeat(np.arange(n_way), queries_per_class)

    nq, ns = queries.shape[1], supports.shape[1]
    shift = centring.offset(distance, embeddings)  # float64 euclidean (`centring`)
    if shift is not None:
        # Each episode's own (queries x supports) block, batched over episodes.
        chunk = max(1, _BLOCK_ELEMENTS // ((nq + ns) * embeddings.shape[1] + nq * ns))
    else:
        # Any other distance takes the matrix of a chunk's queries and supports (one call
        # of the library's distance), of which only the episodes' own blocks are used: the
        # work grows with the chunk (c episodes compute c times their blocks), so chunks are
        # as small as keeps a call's (c nq) x (c ns) x d pairs' elements near the bound.
        chunk = max(1, int(np.sqrt(_BLOCK_ELEMENTS / (nq * ns * embeddings.shape[1]))))
    own = support_class[None, None, :] == query_class[None, :, None]
    accuracy = np.empty(episodes)
    for begin in range(0, episodes, chunk):
        stop = min(begin + chunk, episodes)
        c = stop - begin
        episode_queries = embeddings[queries[begin:stop]]  # (c, nq, d)
        episode_supports = embeddings[supports[begin:stop]]  # (c, ns, d)
        if shift is not None:
            d = centring.centred_dissimilarities(distance, episode_queries, episode_supports, shift)
        else:
            block = centring.dissimilarities(
                distance,
                episode_queries.reshape(c * nq, -1),
                episode_supports.reshape(c * ns, -1),
            ).reshape(c, nq, c, ns)
            d = block[np.arange(c), :, np.arange(c), :]  # (c, nq, ns): each episode's own block
        nearest_own = np.where(own, d, np.inf).min(axis=2)
        nearest_other = np.where(own, np.inf, d).min(axis=2)
        accuracy[begin:stop] = np.mean(nearest_own < nearest_other, axis=1)
    half_width = 1.96 * accuracy.std(ddof=1) / np.sqrt(episodes) if episodes > 1 else 0.0
    return float(accuracy.mean()), float(half_width)
