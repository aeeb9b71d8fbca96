import numpy as np
import pytest
from metric_references import distance_matrix

import tfmetric
from tfmetric import metrics


def _roc_points(same, distances):
    """(FAR, TAR) for every "same iff distance <= t", t from -inf to every value."""
    same = np.asarray(same, bool)
    points = [(0.0, 0.0, -np.inf)]
    for t in np.unique(distances):
        accept = distances <= t
        points.append((np.mean(accept[~same]), np.mean(accept[same]), t))
    return points


def _auc_by_pairs(same, distances):
    same = np.asarray(same, bool)
    pos, neg = distances[same], distances[~same]
    wins = sum((p < n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _eer_by_segments(same, distances):
    pts = _roc_points(same, distances)
    for (f0, t0, _), (f1, t1, _) in zip(pts, pts[1:], strict=False):
        g0, g1 = (1 - t0) - f0, (1 - t1) - f1
        if g0 > 0 >= g1:
            s = g0 / (g0 - g1)
            return f0 + s * (f1 - f0)
    raise AssertionError


def _random_pairs(seed, n=60, ties=True):
    rng = np.random.default_rng(seed)
    same = rng.integers(0, 2, n).astype(bool)
    d = rng.normal(size=n) + np.where(same, 0.0, 1.0)
    if ties:
        d = np.round(d, 1)
    return same, d


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_against_pair_counting(seed):
    same, d = _random_pairs(seed)
    np.testing.assert_allclose(metrics.roc_auc(same, d), _auc_by_pairs(same, d))
    # Same values as similarities, reversed direction.
    np.testing.assert_allclose(metrics.roc_auc(same, -d, similarity=True), _auc_by_pairs(same, d))


def test_equal_error_rate_hand_checked():
    # ROC: (0,0) (0,.5) (.5,.5) (.5,1) (1,1); FRR = FAR at (.5, .5).
    assert metrics.equal_error_rate([1, 1, 0, 0], [0.1, 0.5, 0.4, 0.9]) == 0.5
    # Perfectly separated: EER 0.
    assert metrics.equal_error_rate([1, 1, 0, 0], [0.1, 0.2, 0.4, 0.9]) == 0.0
    # One of three negatives closer than both positives: segment (1/3,0)-(1/3,1) crosses at 1/3.
    np.testing.assert_allclose(metrics.equal_error_rate([1, 1, 0, 0, 0], [2, 3, 1, 5, 6]), 1 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_error_rate_against_reference(seed):
    same, d = _random_pairs(seed)
    np.testing.assert_allclose(metrics.equal_error_rate(same, d), _eer_by_segments(same, d))


@pytest.mark.parametrize("far", [0.0, 0.05, 0.2, 1.0])
def test_tar_at_far_against_reference(far):
    same, d = _random_pairs(3)
    expected = max(tar for fa, tar, _ in _roc_points(same, d) if fa <= far)
    np.testing.assert_allclose(metrics.tar_at_far(same, d, far=far), expected)
    np.testing.assert_allclose(metrics.tar_at_far(same, -d, far=far, similarity=True), expected)


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
@pytest.mark.parametrize("seed", [0, 4])
def test_best_threshold_against_brute_force(metric, seed):
    same, d = _random_pairs(seed)
    best = (-1.0, None)
    for t in [-np.inf, *sorted(np.unique(d))]:
        accept = d <= t
        tp = np.sum(accept & same)
        fp = np.sum(accept & ~same)
        fn = np.sum(~accept & same)
        value = np.mean(accept == same) if metric == "accuracy" else 2 * tp / (2 * tp + fp + fn)
        if value > best[0] + 1e-12:
            best = (value, t)
    threshold, value = metrics.best_threshold(same, d, metric=metric)
    np.testing.assert_allclose(value, best[0])
    np.testing.assert_allclose(threshold, best[1])
    threshold, value = metrics.best_threshold(same, -d, metric=metric, similarity=True)
    np.testing.assert_allclose(value, best[0])
    np.testing.assert_allclose(threshold, -best[1])


def test_best_threshold_hand_checked():
    assert metrics.best_threshold([1, 1, 0, 0], [0.1, 0.3, 0.4, 0.9]) == (0.3, 1.0)
    assert metrics.best_threshold([1, 1, 0, 0], [0.9, 0.7, 0.6, 0.1], similarity=True) == (0.7, 1.0)
    # F1 prefers accepting everything when positives dominate and are interleaved.
    threshold, f1 = metrics.best_threshold([1, 0, 1, 1], [1.0, 2.0, 3.0, 4.0], metric="f1")
    assert threshold == 4.0 and f1 == pytest.approx(2 * 3 / (2 * 3 + 1))


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product", "manhattan"])
def test_pair_distances_against_reference(distance):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
    expected = np.diag(distance_matrix(x, y, distance))
    np.testing.assert_allclose(metrics.paired_distances(x, y, distance), expected, atol=1e-5)


def test_evaluate_verification_is_direction_aware():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    same = rng.integers(0, 2, 200).astype(bool)
    y = np.where(same[:, None], x + 0.3 * rng.normal(size=x.shape), rng.normal(size=x.shape))
    for distance in ["euclidean", "inner_product", "cosine"]:
        scores = metrics.evaluate_verification(x, y, same, distance=distance, far=(0.01, 0.1))
        d = np.diag(distance_matrix(x, y, distance))
        sign = -1 if distance == "inner_product" else 1
        np.testing.assert_allclose(scores["roc_auc"], _auc_by_pairs(same, sign * d), rtol=1e-6)
        assert scores["roc_auc"] > 0.8
        assert set(scores) == {"roc_auc", "equal_error_rate", "tar_at_far_0.01", "tar_at_far_0.1",
                               "threshold", "accuracy"}  # fmt: skip


@pytest.mark.parametrize(
    "same,scores,kwargs,error,match",
    [
        ([1, 1], [0.1, 0.2], {}, ValueError, "both same"),
        ([1, 0], [0.1], {}, ValueError, "one value per pair"),
        ([1, 0], [0.1, np.nan], {}, ValueError, "NaN"),
        ([1, 2], [0.1, 0.2], {}, ValueError, "only 0 and 1"),
        ([1.0, 0.5], [0.1, 0.2], {}, ValueError, r"`same` must hold only 0 and 1.*0\.5"),
        ([1.0, np.nan], [0.1, 0.2], {}, ValueError, r"`same` must hold only 0 and 1.*nan"),
        (["1", "0"], [0.1, 0.2], {}, TypeError, "`same`"),
        ([1, 0], [0.1, 0.2], {"similarity": "yes"}, TypeError, "`similarity`"),
    ],
)
def test_bad_verification_input(same, scores, kwargs, error, match):
    with pytest.raises(error, match=match):
        metrics.roc_auc(same, scores, **kwargs)


@pytest.mark.parametrize(
    "same",
    [
        [1.0, 1.0, 0.0, 0.0, 1.0],
        np.array([1, 1, 0, 0, 1], "float32"),
        np.array([1, 1, 0, 0, 1], "uint8"),
        [True, True, False, False, True],
    ],
)
def test_same_as_floats_ints_or_bools(same):
    distances = [0.1, 0.5, 0.4, 0.9, 0.3]
    truth = np.array([1, 1, 0, 0, 1], bool)
    # By the definition: the fraction of (same, different) pairs ranked right, ties half.
    pairs = [(a, b) for a in np.flatnonzero(truth) for b in np.flatnonzero(~truth)]
    expected = np.mean([(distances[a] < distances[b]) + 0.5 * (distances[a] == distances[b])
                        for a, b in pairs])  # fmt: skip
    assert metrics.roc_auc(same, distances) == pytest.approx(expected)
    assert metrics.best_threshold(same, distances) == (0.3, 0.8)
    x, y = np.zeros((5, 1)), np.array(distances)[:, None]
    assert metrics.evaluate_verification(x, y, same, far=(0.5,))["roc_auc"] == pytest.approx(
        expected
    )


def test_bad_far_and_metric():
    with pytest.raises(ValueError, match="`far`"):
        metrics.tar_at_far([1, 0], [0.1, 0.2], far=1.5)
    with pytest.raises(ValueError, match="`metric`"):
        metrics.best_threshold([1, 0], [0.1, 0.2], metric="auc")
    with pytest.raises(ValueError, match="as many rows"):
        metrics.paired_distances(np.zeros((3, 2)), np.zeros((2, 2)))


def test_few_shot_deterministic_accuracy():
    # Class 2's two samples are each closer to another class than to each other,
    # so its query is always wrong; classes 0 and 1 are always right: 2/3 each episode.
    x = np.array([[0.0], [0.1], [10.0], [10.1], [5.0], [20.0]])
    y = np.array([0, 0, 1, 1, 2, 2])
    accuracy, ci = metrics.n_way_k_shot_accuracy(x, y, n_way=3, k_shot=1, episodes=50, seed=3)
    np.testing.assert_allclose(accuracy, 2 / 3)
    assert ci == pytest.approx(0.0, abs=1e-12)


def test_few_shot_ties_are_errors_and_similarity_direction():
    x = np.ones((8, 2))
    accuracy, _ = metrics.n_way_k_shot_accuracy(x, np.repeat([0, 1, 2, 3], 2), n_way=4, episodes=10)
    assert accuracy == 0.0
    # With the inner product, larger is closer: each class is a distinct direction.
    x = np.array([[1.0, 0], [2.0, 0], [0, 1.0], [0, 2.0]])
    accuracy, _ = metrics.n_way_k_shot_accuracy(
        x, [0, 0, 1, 1], n_way=2, episodes=10, distance="inner_product"
    )
    assert accuracy == 1.0


def test_few_shot_against_episode_reference():
    # Random embeddings: the mean episode accuracy must agree, within its confidence
    # interval, with an independent numpy estimate of the expected accuracy.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    y = np.repeat(np.arange(10), 4)
    accuracy, ci = metrics.n_way_k_shot_accuracy(x, y, n_way=5, k_shot=2, episodes=400, seed=1)
    ref_rng = np.random.default_rng(123)
    d = distance_matrix(x, x, "euclidean")
    hits = []
    for _ in range(3000):
        classes = ref_rng.choice(10, 5, replace=False)
        picks = [ref_rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in classes]
        for i, p in enumerate(picks):
            q = p[2]
            own = min(d[q, p[0]], d[q, p[1]])
            other = min(d[q, s] for j, o in enumerate(picks) if j != i for s in o[:2])
            hits.append(own < other)
    assert abs(accuracy - np.mean(hits)) < 2.5 * ci + 0.01
    assert 0.0 < ci < 0.1
    # Reproducible by seed.
    assert metrics.n_way_k_shot_accuracy(x, y, n_way=5, k_shot=2, episodes=400, seed=1) == (
        accuracy,
        ci,
    )


def test_few_shot_bad_input():
    x, y = np.zeros((6, 2)), np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="`n_way=4`"):
        metrics.n_way_k_shot_accuracy(x, y, n_way=4)
    with pytest.raises(ValueError, match="`k_shot`"):
        metrics.n_way_k_shot_accuracy(x, y, n_way=2, k_shot=0)
    with pytest.raises(ValueError, match="`n_way` must be >= 2"):
        metrics.n_way_k_shot_accuracy(x, y, n_way=1)
    with pytest.raises(ValueError, match="k_shot \\+ queries_per_class"):
        metrics.n_way_k_shot_accuracy(x, y, n_way=2, k_shot=2)
    for seed in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match="`seed` must be None or an integer >= 0"):
            metrics.n_way_k_shot_accuracy(x, y, n_way=2, seed=seed)
        with pytest.raises(ValueError, match=r"`seed` must be None or an integer in \[0, "):
            metrics.clustering_scores(x, y, seed=seed)
    with pytest.raises(ValueError, match="`seed`"):
        metrics.clustering_scores(x, y, seed=2**32)


def test_public_names():
    for name in tfmetric.metrics.__all__:
        assert callable(getattr(tfmetric.metrics, name))


@pytest.mark.parametrize("far", [np.float32(0.5), np.float64(0.5), 0.5, np.int64(1), 1])
def test_far_accepts_any_real_number(far):
    same = [1, 1, 0, 0]
    scores = [0.1, 0.5, 0.4, 0.9]
    expected = metrics.tar_at_far(same, scores, float(far))
    assert metrics.tar_at_far(same, scores, far) == expected
    x = np.zeros((4, 1))
    y = np.array([[0.1], [0.5], [0.4], [0.9]])
    name = f"tar_at_far_{float(far):g}"
    assert metrics.evaluate_verification(x, y, same, far=far)[name] == expected
    assert metrics.evaluate_verification(x, y, same, far=[far, 0.0])[name] == expected
    alternating = np.array([[0.1], [0.9], [0.2], [0.8]])
    folds = metrics.k_fold_verification(x, alternating, [1, 0, 1, 0], folds=2, far=far)
    assert name in folds


@pytest.mark.parametrize("far", [True, np.bool_(False), "0.1", 1.5, -0.1, float("nan"), [0.1, "a"]])
def test_far_rejects_others_naming_it(far):
    x = np.zeros((4, 1))
    y = np.array([[0.1], [0.5], [0.4], [0.9]])
    with pytest.raises(ValueError, match="`far`"):
        metrics.evaluate_verification(x, y, [1, 1, 0, 0], far=far)
    with pytest.raises(ValueError, match="`far`"):
        metrics.k_fold_verification(x, y, [1, 0, 1, 0], folds=2, far=far)
    if not isinstance(far, list):
        with pytest.raises(ValueError, match="`far`"):
            metrics.tar_at_far([1, 0], [0.5, 0.4], far)


@pytest.mark.parametrize("distance", ["manhattan", "cosine"])
def test_few_shot_chunks_of_episodes_do_not_change_the_result(distance, monkeypatch):
    # Episodes go through the distance in chunks (their matrix, of which each episode's own
    # block is used): one episode per chunk, chunks of 4 (the last one shorter) and all
    # episodes at once agree.
    from tfmetric.metrics import few_shot

    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 24)) + np.repeat(rng.normal(size=(12, 24)), 5, axis=0)
    y = np.repeat(np.arange(12), 5)
    pairs = 5 * (5 * 2) * 24  # one episode's queries x supports x dimensions
    rows = []

    class Counted(type(tfmetric.distances.get(distance))):
        def to_dissimilarity(self, values):
            rows.append(len(values) // 5)  # episodes in the chunk's (5 c, 10 c) matrix
            return super().to_dissimilarity(values)

    results, chunks = [], []
    for elements in (1, 16 * pairs, 1 << 40):
        monkeypatch.setattr(few_shot, "_BLOCK_ELEMENTS", elements)
        rows.clear()
        results.append(
            metrics.n_way_k_shot_accuracy(x, y, n_way=5, k_shot=2, episodes=30, distance=Counted())
        )
        chunks.append(list(rows))
    assert chunks == [[1] * 30, [4] * 7 + [2], [30]]
    assert results[0] == results[1] == results[2]
    assert 0.3 < results[0][0] < 1.0
