"""Euclidean metrics on embeddings of large norm (raw pixels), against float64 numpy references.

The float32 expansion `||x||² + ||y||² - 2 <x, y>` loses about `6e-8 * ||x||²`
of a squared distance: with raw 0-255 pixels (`||x||² ~ 1e7`) near-duplicates
at distances 1 and sqrt(2) swap. The metrics centre the embeddings on the
gallery's mean (XLA paths) or compute in float64 (numpy-side metrics).
"""

import warnings

import numpy as np
import pytest
from metric_references import metrics_from_relevance, ranked_relevance

import tfmetric


def _near_duplicates(base, seed):
    """Per base row, a relevant copy at distance 1 and a non-relevant one at sqrt(2)."""
    rng = np.random.default_rng(seed)
    n, d = base.shape
    good = base.copy()
    good[np.arange(n), rng.integers(0, d, n)] += 1
    wrong = base.copy()
    columns = np.stack([rng.permutation(d)[:2] for _ in range(n)])
    wrong[np.arange(n)[:, None], columns] += 1
    gallery = np.concatenate([good, wrong])
    return gallery, np.concatenate([np.arange(n), np.arange(n) + n])


def _uniform_pixels(n, seed=0):
    """The audit's repro: uniform random 0-255 pixel vectors (784-d)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 784)).astype(np.float32)


def _sensor_images(n, seed=0):
    """Pixel-like raw 12-bit images (28 x 28): a shared smooth picture plus noise.

    Their norm (~6e4) is large next to their spread (~1e3), the case centring
    fixes: the float32 resolution of a squared distance falls from ~200 to ~0.05.
    """
    rng = np.random.default_rng(seed)
    row, col = np.mgrid[0:28, 0:28]
    picture = 2000 + 1000 * np.sin(row / 5.0) * np.cos(col / 7.0)
    return np.round(picture.ravel() + rng.integers(-40, 41, (n, 784))).astype(np.float32)


@pytest.mark.parametrize("data", ["sensor", "uniform_pixels", "sensor_in_volts"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean"])
@pytest.mark.parametrize("metrics", [["precision_at_1", "map_at_r"], None])
def test_evaluate_retrieval_on_large_norm_images_matches_float64(data, distance, metrics):
    # `metrics=None` runs the counting path (mAP), the list the top-k path. Before the
    # centring, P@1 was 0.37 / 0.0 (sensor) and 0.64 / 0.39 (uniform pixels). Integer
    # embeddings centred on the coarse offset are computed exactly (sums below 2**24);
    # `sensor_in_volts` (divided by 1000: not on a power-of-two grid) is not, but its
    # float32 resolution becomes ~6e-8 * ||x - c||² ~ 3e-8, well below the 1e-6 gap.
    query = _uniform_pixels(100) if data == "uniform_pixels" else _sensor_images(100)
    gallery, gallery_labels = _near_duplicates(query, 1)
    if data == "sensor_in_volts":
        query, gallery = (a / np.float32(1000) for a in (query, gallery))
    labels = np.arange(len(query))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = tfmetric.metrics.evaluate_retrieval(
            query, labels, gallery, gallery_labels, distance=distance, metrics=metrics
        )
    relevance = ranked_relevance(query, labels, gallery, gallery_labels, distance)
    expected = metrics_from_relevance(relevance)
    assert expected["precision_at_1"] == 1.0  # the reference: every relevant copy is first
    compared = [name for name in scores if name in expected]
    assert {"precision_at_1", "map_at_r"} <= set(compared)
    for name in compared:
        assert scores[name] == pytest.approx(expected[name], abs=1e-9), name


def test_reid_scores_on_uniform_pixels_are_exact():
    query = _uniform_pixels(100)
    gallery, identities = _near_duplicates(query, 2)
    scores = tfmetric.metrics.reid_scores(
        (query, np.arange(len(query)), np.zeros(len(query), int)),
        (gallery, identities, np.ones(len(gallery), int)),
        max_rank=1,
    )
    assert scores["rank_1"] == 1.0
    assert scores["mean_average_precision"] == 1.0


def test_n_way_k_shot_on_uniform_pixels_is_exact():
    # Per base p: class 2i holds p and p + e_a (distance 1 apart), class 2i + 1 holds
    # p + e_b + e_c and p + e_b + e_c + e_d; across the two classes the distances are
    # sqrt(2) to 2. Every class is in every episode, and every query is answered right.
    bases = _uniform_pixels(20, seed=3)
    rng = np.random.default_rng(4)
    samples, labels = [], []
    for i, p in enumerate(bases):
        a, b, c, d = rng.permutation(784)[:4]
        group = np.stack([p, p, p, p])
        group[1, a] += 1
        group[2, [b, c]] += 1
        group[3, [b, c, d]] += 1
        samples.append(group)
        labels += [2 * i, 2 * i, 2 * i + 1, 2 * i + 1]
    accuracy, _ = tfmetric.metrics.n_way_k_shot_accuracy(
        np.concatenate(samples), labels, n_way=40, k_shot=1, episodes=20, seed=0
    )
    assert accuracy == 1.0
