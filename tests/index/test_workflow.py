"""Index with string ids and payloads, lookup tables, calibrate, match, evaluate_classification."""

import os
import stat

import matplotlib
import numpy as np
import pytest

import tfmetric
from tfmetric import index as index_lib

matplotlib.use("Agg")


def _catalogue():
    index = index_lib.ExactIndex()
    index.add(
        [[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]],
        labels=[7, 8, 9],
        ids=["cat-1", "dog-1", "owl-1"],
        payloads=["cat.png", {"path": "dog.png", "size": 3}, None],
    )
    return index


def test_lookup_returns_ids_labels_distances_payloads_and_prints_a_table():
    result = _catalogue().lookup([[0.9, 0.0], [4.0, 0.0]], k=2)
    assert result.ids.tolist() == [["dog-1", "cat-1"], ["owl-1", "dog-1"]]
    assert result.labels.tolist() == [[8, 7], [9, 8]]
    np.testing.assert_allclose(result.distances, [[0.1, 0.9], [1.0, 3.0]], atol=1e-6)
    assert result.payloads == [
        [{"path": "dog.png", "size": 3}, "cat.png"],
        [None, {"path": "dog.png", "size": 3}],
    ]
    assert len(result) == 2
    assert result[1].ids.tolist() == [["owl-1", "dog-1"]]
    assert str(result) == (
        "query  rank  id     label  distance  payload\n"
        '0      1     dog-1  8      0.1000    {"path": "dog.png", "size": 3}\n'
        "0      2     cat-1  7      0.9000    cat.png\n"
        "1      1     owl-1  9      1.0000\n"
        '1      2     dog-1  8      3.0000    {"path": "dog.png", "size": 3}'
    )


def test_lookup_of_one_query_and_of_an_index_without_labels_or_payloads():
    index = index_lib.ExactIndex()
    index.add([[0.0], [2.0]])
    result = index.lookup([1.5], k=1)
    assert result.ids.tolist() == [[1]] and result.labels is None and result.payloads is None
    assert str(result) == "query  rank  id  distance\n0      1     1   0.5000"


def test_string_ids_are_incremental_removable_and_checked():
    index = _catalogue()
    index.add([[9.0, 0.0]], labels=[9], ids=["owl-2"], payloads=["owl2.png"])
    index.remove(["dog-1"])
    assert index.size == 3
    result = index.lookup([[1.0, 0.0]], k=3)
    assert result.ids.tolist() == [["cat-1", "owl-1", "owl-2"]]
    assert result.payloads == [["cat.png", None, "owl2.png"]]
    with pytest.raises(ValueError, match="string ids"):
        index.add([[1.0, 1.0]], labels=[1])
    with pytest.raises(ValueError, match="string"):
        index.add([[1.0, 1.0]], labels=[1], ids=[12])
    with pytest.raises(ValueError, match="unique"):
        index.add([[1.0, 1.0]], labels=[1], ids=["cat-1"])
    with pytest.raises(KeyError, match="nope"):
        index.remove(["nope"])
    with pytest.raises(TypeError, match="ids"):
        index_lib.ExactIndex().add([[1.0]], ids=[1.5])


def test_stored_arrays_are_exposed_read_only():
    index = _catalogue()
    assert index.ids.tolist() == ["cat-1", "dog-1", "owl-1"]
    assert index.labels.tolist() == [7, 8, 9]
    assert index.embeddings.shape == (3, 2)
    assert index.payloads == ["cat.png", {"path": "dog.png", "size": 3}, None]
    with pytest.raises(ValueError):
        index.embeddings[0, 0] = 1.0
    assert index_lib.ExactIndex().labels is None


def test_payloads_must_be_json_and_fill_with_none():
    index = index_lib.ExactIndex()
    index.add([[0.0]], labels=[0])
    index.add([[1.0]], labels=[1], payloads=[{"a": 1}])
    assert index.lookup([[0.0]], k=2).payloads == [[None, {"a": 1}]]
    with pytest.raises(TypeError, match=r"payloads\[0\]"):
        index.add([[2.0]], labels=[2], payloads=[np.zeros(3)])
    with pytest.raises(ValueError, match="payloads"):
        index.add([[2.0], [3.0]], labels=[2, 3], payloads=["one"])


def test_save_load_keeps_string_ids_and_payloads_with_umask_mode(tmp_path):
    index = _catalogue()
    path = tmp_path / "catalogue.npz"
    old = os.umask(0o022)
    try:
        index.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["catalogue.npz"]
    loaded = index_lib.ExactIndex.load(path)
    before, after = index.lookup([[0.9, 0.0]], k=3), loaded.lookup([[0.9, 0.0]], k=3)
    assert after.ids.tolist() == before.ids.tolist()
    assert after.labels.tolist() == before.labels.tolist()
    assert after.payloads == before.payloads
    np.testing.assert_array_equal(after.distances, before.distances)


def test_approximate_index_string_ids_and_payloads():
    pytest.importorskip("faiss")
    index = index_lib.ApproximateIndex()
    index.add([[0.0, 0.0], [3.0, 0.0]], labels=[0, 1], ids=["a", "b"], payloads=[1, 2])
    result = index.lookup([[2.5, 0.0]], k=2)
    assert result.ids.tolist() == [["b", "a"]] and result.payloads == [[2, 1]]


# Calibration on a line: the index holds class 0 at 0 and class 1 at 10.
# Query (position, true label) -> nearest label, distance, right?
#   (0.5, 0) -> 0, 0.5, yes     (9.0, 1) -> 1, 1.0, yes
#   (3.0, 2) -> 0, 3.0, no (class 2 is not indexed)     (6.0, 1) -> 1, 4.0, yes
#   (7.0, 0) -> 1, 3.0, no
# Thresholds 0.5, 1, 3, 4 accept 1, 2, 4, 5 queries:
#   tp = 1, 2, 2, 3   fp = 0, 0, 2, 2   fn = 2, 1, 1, 0   tn = 2, 2, 0, 0
#   precision = 1, 1, 1/2, 3/5   recall = 1/3, 2/3, 2/3, 1
#   f1 = 1/2, 4/5, 4/7, 3/4
LINE_QUERIES = np.array([[0.5], [9.0], [3.0], [6.0], [7.0]])
LINE_LABELS = np.array([0, 1, 2, 1, 0])


def _line_index(distance="euclidean"):
    index = index_lib.ExactIndex(distance=distance)
    index.add([[0.0], [10.0]], labels=[0, 1])
    return index


def test_calibration_curve_by_hand():
    calibration = index_lib.calibrate(_line_index(), LINE_QUERIES, LINE_LABELS)
    curve = calibration.curve
    np.testing.assert_allclose(curve.thresholds, [0.5, 1.0, 3.0, 4.0])
    assert curve.true_positives.tolist() == [1, 2, 2, 3]
    assert curve.false_positives.tolist() == [0, 0, 2, 2]
    assert curve.false_negatives.tolist() == [2, 1, 1, 0]
    assert curve.true_negatives.tolist() == [2, 2, 0, 0]
    np.testing.assert_allclose(curve.precision, [1, 1, 1 / 2, 3 / 5])
    np.testing.assert_allclose(curve.recall, [1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve.f1, [1 / 2, 4 / 5, 4 / 7, 3 / 4])
    # Default target: the best F1.
    assert calibration.thresholds == {"f1": 1.0}


def test_calibrate_meets_each_target_by_hand():
    calibration = index_lib.calibrate(
        _line_index(),
        LINE_QUERIES,
        LINE_LABELS,
        targets={"precision": 0.6, "recall": 0.9, "f1": 0.55},
    )
    # Precision >= 0.6: loosest is 4.0 (0.6); recall >= 0.9: strictest is 4.0;
    # F1 >= 0.55: strictest is 1.0 (0.8).
    assert calibration.thresholds == {"precision": 4.0, "recall": 4.0, "f1": 1.0}
    assert calibration.values["f1"] == pytest.approx({"precision": 1, "recall": 2 / 3, "f1": 0.8})
    strict = index_lib.calibrate(_line_index(), LINE_QUERIES, LINE_LABELS, {"precision": 0.9})
    assert strict.thresholds == {"precision": 1.0}
    assert str(strict).splitlines()[0].split() == ["target", "threshold", "precision", "recall", "f1"]
    with pytest.raises(ValueError, match="precision 0.5; the best is 0.0000"):
        index_lib.calibrate(_line_index(), LINE_QUERIES[2:3], LINE_LABELS[2:3], {"precision": 0.5})
    with pytest.raises(ValueError, match="targets"):
        index_lib.calibrate(_line_index(), LINE_QUERIES, LINE_LABELS, {"accuracy": 0.5})
    with pytest.raises(ValueError, match="targets"):
        index_lib.calibrate(_line_index(), LINE_QUERIES, LINE_LABELS, {"f1": 1.5})


def test_match_gives_label_or_unknown():
    index = _line_index()
    assert index_lib.match(index, LINE_QUERIES, threshold=1.0).tolist() == [0, 1, -1, -1, -1]
    assert index_lib.match(index, LINE_QUERIES, threshold=3.0, unknown=99).tolist() == [
        0,
        1,
        0,
        99,
        1,
    ]
    assert index_lib.match(index, [9.5], threshold=1.0).tolist() == [1]
    with pytest.raises(ValueError, match="labels"):
        unlabelled = index_lib.ExactIndex()
        unlabelled.add([[0.0]])
        index_lib.match(unlabelled, [[0.0]], threshold=1.0)


def test_evaluate_classification_by_hand():
    result = index_lib.evaluate_classification(_line_index(), LINE_QUERIES, LINE_LABELS, 3.0)
    assert result == pytest.approx(
        {
            "precision": 1 / 2,
            "recall": 2 / 3,
            "f1": 4 / 7,
            "accuracy": 2 / 5,
            "true_positives": 2,
            "false_positives": 2,
            "false_negatives": 1,
            "true_negatives": 0,
        }
    )


def test_similarity_index_thresholds_are_similarities():
    # Inner product: class 0 along x, class 1 along y.
    index = index_lib.ExactIndex(distance="inner_product")
    index.add([[1.0, 0.0], [0.0, 1.0]], labels=[0, 1])
    queries = np.array([[0.9, 0.0], [0.0, 0.5], [0.2, 0.0]])
    labels = np.array([0, 1, 1])  # the last one's nearest (by similarity 0.2) is class 0
    calibration = index_lib.calibrate(index, queries, labels, {"precision": 1.0})
    np.testing.assert_allclose(calibration.curve.thresholds, [0.9, 0.5, 0.2])
    assert calibration.thresholds["precision"] == pytest.approx(0.5)
    assert calibration.direction.kind == "similarity"
    assert index_lib.match(index, queries, threshold=0.5).tolist() == [0, 1, -1]
    # The same curve from the values alone, given their distance (or direction).
    nearest, values = np.array([0, 1, 0]), np.array([0.9, 0.5, 0.2])
    for distance in ("inner_product", tfmetric.distances.SIMILARITY):
        curve = index_lib.calibration_curve(nearest, values, labels, distance)
        np.testing.assert_allclose(curve.thresholds, [0.9, 0.5, 0.2])
        np.testing.assert_allclose(curve.precision, [1.0, 1.0, 2 / 3])


def test_deprecated_is_similarity_still_works_with_a_warning():
    nearest, values, labels = np.array([0, 1, 0]), np.array([0.9, 0.5, 0.2]), np.array([0, 1, 1])
    with pytest.warns(DeprecationWarning, match="distance="):
        curve = index_lib.calibration_curve(nearest, values, labels, is_similarity=True)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.5, 0.2])
    calibration = index_lib.Calibration({}, {}, curve, tfmetric.distances.get("inner_product"))
    with pytest.warns(DeprecationWarning, match="direction"):
        assert calibration.is_similarity is True
    with pytest.raises(ValueError, match="`distance` only"), pytest.warns(DeprecationWarning):
        index_lib.calibration_curve(nearest, values, labels, "cosine", is_similarity=True)


def _reference_curve(nearest, distances, labels):
    """Brute force: every distinct distance as threshold, counting each query."""
    rows = []
    for t in sorted(set(distances.tolist())):
        tp = fp = fn = tn = 0
        for n, d, y in zip(nearest, distances, labels, strict=True):
            accepted, right = d <= t, n == y
            tp += accepted and right
            fp += accepted and not right
            fn += (not accepted) and right
            tn += (not accepted) and not right
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        rows.append((t, tp, fp, fn, tn, p, r, 2 * p * r / (p + r) if p + r else 0.0))
    return np.array(rows)


def test_calibration_curve_matches_brute_force():
    rng = np.random.default_rng(3)
    nearest = rng.integers(0, 4, 200)
    labels = np.where(rng.random(200) < 0.7, nearest, rng.integers(0, 6, 200))
    distances = np.round(rng.random(200), 2)  # ties on purpose
    curve = index_lib.calibration_curve(nearest, distances, labels)
    expected = _reference_curve(nearest, distances, labels)
    got = np.stack(
        [
            curve.thresholds,
            curve.true_positives,
            curve.false_positives,
            curve.false_negatives,
            curve.true_negatives,
            curve.precision,
            curve.recall,
            curve.f1,
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_plot_calibration_draws_the_three_curves():
    calibration = index_lib.calibrate(_line_index(), LINE_QUERIES, LINE_LABELS, {"recall": 0.9})
    figure = index_lib.plot_calibration(calibration)
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines[:3]] == ["precision", "recall", "f1"]
    np.testing.assert_allclose(lines[1].get_ydata(), [1 / 3, 2 / 3, 2 / 3, 1])
    assert lines[3].get_xdata()[0] == 4.0  # the recall threshold, marked


def test_index_calibrate_and_match_take_float_labels():
    index = index_lib.ExactIndex()
    index.add([[0.0], [10.0]], labels=np.array([0.0, 1.0]))
    queries, labels = [[0.5], [9.0], [3.0]], np.array([0.0, 1.0, 2.0], "float32")
    calibration = index_lib.calibrate(index, queries, labels, {"precision": 1.0})
    assert calibration.thresholds == {"precision": 1.0}
    assert index_lib.match(index, queries, 1.0).tolist() == [0, 1, -1]
    result = index_lib.evaluate_classification(index, queries, labels, 1.0)
    assert result["true_positives"] == 2 and result["false_positives"] == 0
