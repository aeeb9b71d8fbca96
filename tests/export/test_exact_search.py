"""The SavedModel's exact search: the shared top-k traced to plain TensorFlow ops."""

import numpy as np
import tensorflow as tf

import tfmetric


def _reference(queries, gallery, k):
    """Stable argsort of the float64 euclidean distances (ties: lower row first)."""
    d = np.sqrt(np.sum((queries[:, None, :].astype(np.float64) - gallery[None]) ** 2, axis=2))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_plain_tensorflow_trace_matches_stable_argsort():
    # Small integer coordinates: many exact ties; unknown batch size, no XLA.
    rng = np.random.default_rng(3)
    queries = rng.integers(-2, 3, size=(13, 3)).astype(np.float32)
    gallery = rng.integers(-2, 3, size=(29, 3)).astype(np.float32)
    distance = tfmetric.distances.get("euclidean")

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def retrieve(q):
        return tfmetric.export.exact_search(q, tf.constant(gallery), distance, 6)

    values, positions = retrieve(tf.constant(queries))
    expected_positions, expected_values = _reference(queries, gallery, 6)
    np.testing.assert_array_equal(positions.numpy(), expected_positions)
    np.testing.assert_allclose(values.numpy(), expected_values, rtol=1e-6)
    ops = {op.type for op in retrieve.get_concrete_function().graph.get_operations()}
    assert "TopKV2" in ops and not any("Xla" in op for op in ops)
