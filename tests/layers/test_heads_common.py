"""Properties shared by every proxy head: config, saving, robustness, mixed precision, input checks."""

import inspect
import os

import backend_ops
import keras
import numpy as np
import pytest

import tfmetric

HEADS = {
    "ArcFace": lambda: tfmetric.layers.ArcFace(4, margin=0.3, scale=64.0, easy_margin=True),
    "CosFace": lambda: tfmetric.layers.CosFace(4, margin=0.2, scale=64.0),
    "SubCenterArcFace": lambda: tfmetric.layers.SubCenterArcFace(4, centers=2, scale=64.0),
    "NormalizedSoftmax": lambda: tfmetric.layers.NormalizedSoftmax(4, temperature=0.1),
    "ProxyAnchor": lambda: tfmetric.layers.ProxyAnchor(4, margin=0.2, alpha=16.0),
    "ProxyNCA": lambda: tfmetric.layers.ProxyNCA(4, scale=3.0),
}
LABELS = np.array([0, 1, 2, 3, 0, 1])


def _embeddings(dtype="float32", seed=0):
    return np.random.default_rng(seed).normal(size=(6, 5)).astype(dtype)


def _value_and_gradients(head, embeddings, labels=LABELS):
    """Per-sample values and the gradients of their mean wrt the embeddings and the head's weights."""
    dtype = keras.backend.standardize_dtype(embeddings.dtype)
    values = head(embeddings, labels)
    mean, (d_embeddings, d_weights) = backend_ops.value_and_grad_with_variables(
        lambda e: keras.ops.mean(head(keras.ops.cast(e, dtype), labels)),
        keras.ops.convert_to_numpy(keras.ops.cast(embeddings, "float32")),
        head.trainable_variables,
    )
    np.testing.assert_allclose(float(mean), np.mean(keras.ops.convert_to_numpy(values)), rtol=1e-6)
    return values, [d_embeddings, *d_weights]


def _assert_finite(values, grads):
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(values)))
    for grad in grads:
        assert grad is not None
        assert np.all(np.isfinite(keras.ops.convert_to_numpy(grad)))


@pytest.mark.parametrize("name", HEADS)
def test_every_init_argument_is_in_the_config(name):
    head = HEADS[name]()
    config = head.get_config()
    for parameter in inspect.signature(type(head).__init__).parameters.values():
        if parameter.name in ("self", "kwargs"):
            continue
        assert parameter.name in config, parameter.name
    rebuilt = type(head).from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.dtype_policy.name == "float32"


@pytest.mark.parametrize("name", HEADS)
def test_registered_and_deserializable_by_name(name):
    head = HEADS[name]()
    assert keras.saving.get_registered_name(type(head)) == f"tfmetric>{name}"
    serialized = keras.saving.serialize_keras_object(head)
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(head)


@pytest.mark.parametrize("name", HEADS)
def test_keras_file_round_trip(name, tmp_path):
    embedder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    model = tfmetric.models.ProxyModel(embedder, HEADS[name]())
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.head) is type(model.head)
    assert loaded.head.get_config() == model.head.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.head.proxies), keras.ops.convert_to_numpy(model.head.proxies))
    embeddings = _embeddings()[:, :3]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded.head(embeddings, LABELS)), keras.ops.convert_to_numpy(model.head(embeddings, LABELS))
    )


@pytest.mark.parametrize("name", HEADS)
def test_duplicate_and_zero_embeddings_are_finite(name):
    head = HEADS[name]()
    embeddings = np.repeat(_embeddings()[:2], 3, axis=0)
    embeddings[-1] = 0.0
    _assert_finite(*_value_and_gradients(head, embeddings))


@pytest.mark.parametrize("name", HEADS)
def test_embedding_on_a_proxy_and_on_its_antipode_is_finite(name):
    head = HEADS[name]()
    head.build((None, 5))
    proxies = keras.ops.convert_to_numpy(head.proxies)
    embeddings = np.stack(
        [proxies[0], -proxies[0], proxies[-1], -proxies[-1], 10 * proxies[1], proxies[2]]
    )
    labels = np.array([0, 0, 3, 3, 0, 1])
    _assert_finite(*_value_and_gradients(head, embeddings, labels))


@pytest.mark.parametrize("name", HEADS)
def test_batch_without_positive_pairs_is_finite(name):
    head = HEADS[name]()
    labels = np.array([0, 1, 2, 3])
    _assert_finite(*_value_and_gradients(head, _embeddings()[:4], labels))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", HEADS)
def test_low_precision_embeddings_match_float32(name, dtype):
    head = HEADS[name]()
    embeddings = keras.ops.cast(_embeddings() * 30.0, dtype)
    low = head(embeddings, LABELS)
    assert keras.backend.standardize_dtype(low.dtype) == "float32"
    full = head(keras.ops.cast(embeddings, "float32"), LABELS)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(low), keras.ops.convert_to_numpy(full), rtol=1e-6)
    _assert_finite(*_value_and_gradients(head, embeddings))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_heads_stay_float32_under_a_mixed_policy(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        head = tfmetric.layers.ArcFace(4, scale=64.0)
        head.build((None, 5))
        assert head.compute_dtype == "float32"
        assert keras.backend.standardize_dtype(head.proxies.dtype) == "float32"
        values, grads = _value_and_gradients(head, keras.ops.cast(_embeddings(), policy[6:]))
        _assert_finite(values, grads)
    finally:
        keras.config.set_dtype_policy(previous)


def test_compiled_call_with_xla():
    head = tfmetric.layers.SubCenterArcFace(4, centers=2)
    head.build((None, 5))
    eager = head(_embeddings(), LABELS)
    compiled = backend_ops.jit(lambda e, y: head(e, y))(_embeddings(), LABELS)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(compiled), keras.ops.convert_to_numpy(eager), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_classes", [1, 0, 2.5, True, "3"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="`num_classes`"):
        tfmetric.layers.ArcFace(num_classes)


@pytest.mark.parametrize("name", HEADS)
def test_out_of_range_labels_raise(name):
    head = HEADS[name]()
    for labels in (np.array([0, 1, 2, 4, 0, 1]), np.array([0, -1, 2, 3, 0, 1])):
        with pytest.raises(ValueError, match="`labels`"):
            head(_embeddings(), labels)


@pytest.mark.parametrize("name", HEADS)
def test_string_and_huge_labels_are_named_errors_on_every_backend(name):
    head = HEADS[name]()
    with pytest.raises(ValueError, match="`labels` must hold integer class labels.*strings"):
        head(_embeddings(), np.array(["a", "b", "c", "d", "a", "b"]))
    # 2**32 would be 0 once truncated to int32 (JAX without x64): never a valid class.
    with pytest.raises(ValueError, match="`labels`"):
        head(_embeddings(), np.array([0, 1, 2, 3, 0, 2**32], "int64"))


@pytest.mark.parametrize("name", HEADS)
def test_head_contract_one_value_per_sample_and_matching_batches(name):
    head = HEADS[name]()
    assert tuple(head(_embeddings(), LABELS).shape) == (len(LABELS),)
    with pytest.raises(ValueError, match=r"`labels`.*6"):
        head(_embeddings(), LABELS[:5])


def test_bad_inputs_raise():
    head = tfmetric.layers.CosFace(4)
    with pytest.raises(ValueError, match="`labels`"):
        head(_embeddings(), LABELS + 0.5)
    with pytest.raises(ValueError, match="`labels`"):
        head(_embeddings(), LABELS[:4])
    with pytest.raises(ValueError, match="`embeddings`"):
        head(_embeddings()[None], LABELS)


def test_labels_of_shape_batch_by_one():
    head = tfmetric.layers.CosFace(4)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(_embeddings(), LABELS[:, None])), keras.ops.convert_to_numpy(head(_embeddings(), LABELS))
    )


@pytest.mark.parametrize("name", sorted(HEADS))
def test_built_head_rejects_another_embedding_size(name):
    # A raw MatMul error ("Matrix size-incompatible") before.
    head = HEADS[name]()
    head(_embeddings(), LABELS)  # built for D = 5
    for call in (lambda: head(_embeddings()[:, :3], LABELS), lambda: head.similarities(
        _embeddings()[:, :3]
    )):
        with pytest.raises(ValueError, match=r"`embeddings` has embedding size 3.*size 5"):
            call()
    assert head(_embeddings(), LABELS).shape == (6,)  # the built size still works
