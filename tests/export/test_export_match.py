"""`retrieve` returns the match decision of a calibrated index: `tfmetric.index.match` in the graph."""

import keras
import numpy as np
import pytest

import tfmetric
from tfmetric.export import Gallery


def test_retrieve_returns_the_calibrated_match(vector_model, tmp_path):
    model, x, y = vector_model
    embeddings = np.asarray(model(x))
    # Gallery: classes 0-2 only, string ids; class 3 is "unknown" to the index.
    known = y < 3
    index = tfmetric.index.ExactIndex()
    index.add(
        embeddings[known][::2],
        labels=y[known][::2],
        ids=[f"item-{i}" for i in range(len(y[known][::2]))],
    )
    calibration = tfmetric.index.calibrate(
        index, embeddings[1::2], y[1::2], targets={"precision": "optimal"}
    )
    threshold = calibration.thresholds["precision"]
    result = tfmetric.export.export_for_serving(
        model,
        tmp_path,
        name="m",
        distance="euclidean",
        top_k=3,
        gallery=Gallery.from_index(index, match_threshold=threshold, unknown_label=-7),
        parity=tfmetric.export.ParityOptions(latency_runs=0),
    )
    retrieve = keras.layers.TFSMLayer(result.path, call_endpoint="retrieve")
    out = {k: np.asarray(v) for k, v in retrieve(x).items()}
    expected = tfmetric.index.match(index, embeddings, threshold, unknown=-7)
    np.testing.assert_array_equal(out["match"], expected)
    np.testing.assert_array_equal(out["matched"], expected != -7)
    # Both decisions occur, and unmatched queries are those beyond the threshold.
    assert out["matched"].any() and not out["matched"].all()
    assert np.all(out["distances"][~out["matched"], 0] > threshold)
    assert out["ids"].dtype.kind in "OSU"
    assert result.metadata["match"] == {"threshold": threshold, "unknown_label": -7}


def test_match_threshold_needs_labels_and_a_finite_value():
    with pytest.raises(ValueError, match="labels"):
        Gallery(np.zeros((2, 3)), match_threshold=0.5)
    with pytest.raises(ValueError, match="finite"):
        Gallery(np.zeros((2, 3)), labels=[0, 1], match_threshold=float("nan"))
    with pytest.raises(ValueError, match="unknown_label"):
        Gallery(np.zeros((2, 3)), labels=[0, 1], match_threshold=0.5, unknown_label="none")
