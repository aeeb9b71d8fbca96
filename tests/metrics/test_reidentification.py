"""Camera-aware CMC and mAP (Market-1501 rules) against hand-computed and naive references."""

import numpy as np
import pytest
from references import pairwise

from tfmetric.metrics import reid_scores


def _naive(q, q_id, q_cam, g, g_id, g_cam, max_rank, junk_label=-1, distance="euclidean"):
    """Per query: drop junk and same-identity-same-camera, sort (wrong before good on ties)."""
    d = pairwise(q, g, distance)
    cmc, aps = np.zeros(max_rank), []
    for i in range(len(q)):
        rows = []
        for j in range(len(g)):
            if g_id[j] == junk_label or (g_id[j] == q_id[i] and g_cam[j] == q_cam[i]):
                continue
            good = g_id[j] == q_id[i]
            rows.append((d[i, j], good))
        rows.sort(key=lambda r: (r[0], r[1]))
        goods = [rank for rank, (_, good) in enumerate(rows, 1) if good]
        if not goods:
            continue
        aps.append(np.mean([(n + 1) / rank for n, rank in enumerate(goods)]))
        cmc += np.arange(1, max_rank + 1) >= goods[0]
    return cmc / len(aps), np.mean(aps), len(aps)


@pytest.mark.parametrize("junk_label", [-1, 0, 3])
def test_queries_of_the_junk_identity_match_the_reference(junk_label):
    # Junk gallery images are removed from every ranking (Market-1501's `junk_index1`): they
    # are never good matches, even for a query carrying the junk identity.
    rng = np.random.default_rng(junk_label + 7)
    q, g = rng.normal(size=(24, 3)), rng.normal(size=(40, 3))
    q_id, g_id = rng.integers(-1, 5, 24), rng.integers(-1, 5, 40)
    q_cam, g_cam = rng.integers(1, 4, 24), rng.integers(1, 4, 40)
    assert np.any(q_id == junk_label) and np.any(g_id == junk_label)
    scores = reid_scores((q, q_id, q_cam), (g, g_id, g_cam), max_rank=6, junk_label=junk_label)
    cmc, mean_ap, count = _naive(q, q_id, q_cam, g.astype(np.float32), g_id, g_cam, 6, junk_label)
    np.testing.assert_allclose(scores["cmc"], cmc)
    np.testing.assert_allclose(scores["mean_average_precision"], mean_ap, rtol=1e-6)
    assert scores["num_queries"] == count and scores["num_skipped"] == 24 - count


def test_query_of_the_junk_identity_has_no_good_match():
    g = np.array([[0.1], [0.2], [0.3]])
    # The second query (id -1) would otherwise count the junk image 0.1 (camera 2) as good.
    scores = reid_scores((np.zeros((2, 1)), [1, -1], [1, 1]), (g, [-1, 1, 2], [2, 2, 2]))
    assert scores["num_queries"] == 1 and scores["num_skipped"] == 1
    assert scores["mean_average_precision"] == 1.0


def test_hand_computed():
    q = np.array([[0.0], [10.0]])
    g = np.array([[0.5], [1.0], [2.0], [3.0], [0.2], [10.0], [11.0], [13.0]])
    g_id = [1, 3, 1, 1, -1, 2, 2, 0]
    g_cam = [1, 1, 2, 3, 2, 1, 1, 2]
    # Query 1 (id 1, cam 1): 0.5 same cam -> out, 0.2 junk -> out; ranking 1.0 (id 3) wrong,
    # 2.0 good, 3.0 good, then 10, 11, 13: goods at ranks 2, 3 -> AP = (1/2 + 2/3) / 2.
    # Query 2 (id 2, cam 2): 10.0 and 11.0 (id 2, cam 1) good at ranks 1, 2 -> AP 1.
    scores = reid_scores((q, [1, 2], [1, 2]), (g, g_id, g_cam), max_rank=4)
    np.testing.assert_allclose(scores["cmc"], [0.5, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(scores["mean_average_precision"], ((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert scores["rank_1"] == 0.5 and scores["num_skipped"] == 0


def test_ties_are_pessimistic_and_unmatched_queries_skipped():
    g = np.array([[1.0], [1.0], [-3.0]])
    # Query id 5 has no good match (only a same-camera image); query id 1 ties with a wrong one.
    scores = reid_scores((np.zeros((2, 1)), [1, 5], [1, 1]), (g, [1, 2, 5], [2, 2, 1]), max_rank=2)
    np.testing.assert_allclose(scores["cmc"], [0.0, 1.0])
    assert scores["mean_average_precision"] == 0.5
    assert scores["num_queries"] == 1 and scores["num_skipped"] == 1


@pytest.mark.parametrize("distance", ["euclidean", "cosine", "manhattan"])
def test_random_matches_naive_reference(monkeypatch, distance):
    from tfmetric.metrics import reidentification

    # Several query chunks (2 queries each, the last one alone): the distances other than
    # euclidean go through the library's distance matrix, per chunk.
    monkeypatch.setattr(reidentification, "_BLOCK_ELEMENTS", 100)
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(31, 3)), rng.normal(size=(50, 3))
    q_id, g_id = rng.integers(1, 6, 31), rng.integers(-1, 6, 50)
    q_cam, g_cam = rng.integers(1, 4, 31), rng.integers(1, 4, 50)
    scores = reid_scores((q, q_id, q_cam), (g, g_id, g_cam), distance=distance, max_rank=8)
    q32, g32 = q.astype(np.float32), g.astype(np.float32)
    cmc, mean_ap, count = _naive(q32, q_id, q_cam, g32, g_id, g_cam, 8, distance=distance)
    np.testing.assert_allclose(scores["cmc"], cmc)
    np.testing.assert_allclose(scores["mean_average_precision"], mean_ap, rtol=1e-6)
    assert scores["num_queries"] == count


def test_bad_input_is_explained():
    q = (np.zeros((2, 3)), [1, 2], [1, 1])
    with pytest.raises(ValueError, match="`query` must be a tuple"):
        reid_scores(q[0], q)
    with pytest.raises(ValueError, match="cameras"):
        reid_scores(q, (np.zeros((2, 3)), [1, 2], [1]))
    with pytest.raises(ValueError, match="same size"):
        reid_scores(q, (np.zeros((2, 4)), [1, 2], [2, 2]))
    with pytest.raises(ValueError, match="No query has a good match"):
        reid_scores(q, (np.zeros((2, 3)), [1, 2], [1, 1]))
    gallery = (np.zeros((2, 3)), [1, 2], [2, 2])
    for junk_label in ("-1", 1.5, -1.0, True, [-1]):
        with pytest.raises(ValueError, match="`junk_label` must be an integer"):
            reid_scores(q, gallery, junk_label=junk_label)
    for junk_label in (None, np.int64(-1), 7):
        assert reid_scores(q, gallery, junk_label=junk_label)["num_queries"] == 2
