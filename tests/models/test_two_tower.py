"""Two-tower model: logits layer, training, retrieval, export and serialization."""

import inspect
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

RNG = np.random.default_rng(0)


def _np(x):
    return keras.ops.convert_to_numpy(x)
N = 32
QUERIES = RNG.normal(size=(N, 3)).astype("float32")
ITEMS = RNG.normal(size=(N, 5)).astype("float32")


def _towers(seed=0):
    keras.utils.set_random_seed(seed)
    query = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)], name="query_tower")
    item = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)], name="item_tower")
    return query, item


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_logits_layer_matches_definition_and_clamps():
    q, c = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    log_q = np.log(RNG.uniform(0.1, 0.9, size=4))
    layer = tfmetric.layers.InBatchLogits(temperature=0.2)
    expected = _normalize(q) @ _normalize(c).T / 0.2 - log_q[None, :]
    np.testing.assert_allclose(_np(layer(q, c, log_q)), expected, rtol=1e-5)
    assert [w.name for w in layer.trainable_weights] == ["log_logit_scale"]
    layer.log_logit_scale.assign(10.0)  # exp(10) > 100: clamped to the maximum scale
    np.testing.assert_allclose(_np(layer(q, c)), _normalize(q) @ _normalize(c).T * 100.0, rtol=1e-5)
    fixed = tfmetric.layers.InBatchLogits(temperature=2.0, learn_temperature=False, normalize=False)
    assert not fixed.trainable_weights
    np.testing.assert_allclose(_np(fixed(q, c)), q @ c.T / 2.0, rtol=1e-5)


def test_clip_training_learns_the_pairing_and_the_temperature():
    query, item = _towers()
    # Each item is a fixed linear function of its query: the towers can align them.
    items = QUERIES @ RNG.normal(size=(3, 5)).astype("float32")
    model = tfmetric.models.TwoTowerModel(query, item, temperature=0.1)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=tfmetric.losses.InBatchSoftmaxLoss(symmetric=True),
        jit_compile=True,
    )
    x = {"query": QUERIES, "candidate": items}
    scale_before = float(model.logits_layer.logit_scale())
    # y omitted: the row numbers are the candidate ids.
    losses = model.fit(x, batch_size=8, epochs=20, verbose=0, shuffle=False).history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert float(model.logits_layer.logit_scale()) != scale_before
    _, indices = model.retrieve(QUERIES, items, k=1)
    assert np.mean(indices[:, 0] == np.arange(N)) > 0.8


def test_retrieve_matches_brute_force():
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(query, item)
    scores, indices = model.retrieve(QUERIES[:5], ITEMS, k=3)
    expected = _normalize(query.predict(QUERIES[:5], verbose=0)) @ _normalize(
        item.predict(ITEMS, verbose=0)
    ).T
    order = np.argsort(-expected, axis=1)[:, :3]
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, order, 1), rtol=1e-5)


def test_logq_input_is_subtracted():
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(
        query, item, logq_correction=True, learn_temperature=False, temperature=0.5
    )
    log_q = np.log(RNG.uniform(0.1, 0.9, size=4)).astype("float32")
    x = {"query": QUERIES[:4], "candidate": ITEMS[:4], "candidate_log_probability": log_q}
    expected = (
        _normalize(query.predict(QUERIES[:4], verbose=0))
        @ _normalize(item.predict(ITEMS[:4], verbose=0)).T
        / 0.5
        - log_q[None, :]
    )
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)


def test_keras_round_trip_and_config(tmp_path):
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(query, item, temperature=0.05, max_logit_scale=50.0)
    model.logits_layer.log_logit_scale.assign(3.0)
    x = {"query": QUERIES[:4], "candidate": ITEMS[:4]}
    path = os.path.join(tmp_path, "two_tower.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-6)
    config = model.get_config()
    parameters = set(inspect.signature(tfmetric.models.TwoTowerModel).parameters) - {"kwargs"}
    assert parameters <= set(config)
    assert config["max_logit_scale"] == 50.0 and config["temperature"] == 0.05


@pytest.mark.parametrize(
    "names",
    [("query", "candidate"), ("candidate", "query"), ("logits", "query_tower"), ("query", None)],
    ids=["inputs", "swapped", "logits-and-wrapper-name", "shared"],
)
def test_towers_may_take_the_names_of_the_inputs_and_layers(names, tmp_path):
    keras.utils.set_random_seed(1)
    query = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)], name=names[0])
    if names[1] is None:  # one tower for both sides
        item, items = query, ITEMS[:4, :3]
    else:
        item = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4)], name=names[1])
        items = ITEMS[:4]
    model = tfmetric.models.TwoTowerModel(query, item, temperature=0.5, learn_temperature=False)
    assert model.query_tower is query and model.candidate_tower is item
    x = {"query": QUERIES[:4], "candidate": items}
    expected = (
        _normalize(query.predict(QUERIES[:4], verbose=0))
        @ _normalize(item.predict(items, verbose=0)).T
        / 0.5
    )
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)
    path = os.path.join(tmp_path, "two_tower.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert (loaded.query_tower.name, loaded.candidate_tower.name) == (query.name, item.name)
    np.testing.assert_allclose(_np(loaded(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.tf_only  # SavedModel export
def test_export_towers_with_retrieve_signature(tmp_path):
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(query, item)
    ids = np.array([f"item{i}" for i in range(N)])
    signatures = model.export_towers(
        tmp_path / "query", tmp_path / "candidate", candidates=ITEMS, ids=ids, top_k=4
    )
    assert "retrieve" in signatures["query"] and signatures["candidate"] == ["serving_default"]
    candidate = tf.saved_model.load(str(tmp_path / "candidate"))
    embedded = candidate.signatures["serving_default"](inputs=tf.constant(ITEMS[:3]))
    np.testing.assert_allclose(
        embedded["embeddings"], _normalize(item.predict(ITEMS[:3], verbose=0)), rtol=1e-5
    )
    served = tf.saved_model.load(str(tmp_path / "query"))
    found = served.signatures["retrieve"](inputs=tf.constant(QUERIES[:5]))
    scores, indices = model.retrieve(QUERIES[:5], ITEMS, k=4)
    np.testing.assert_array_equal(found["ids"].numpy().astype(str), ids[indices])
    np.testing.assert_allclose(found["distances"], scores, rtol=1e-5)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "query").st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(ValueError, match="query_path"):
        model.export_towers(tmp_path / "query", tmp_path / "other")


def test_bad_input_is_named():
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(query, item)
    with pytest.raises(ValueError, match="4 queries but 3 candidates"):
        model({"query": QUERIES[:4], "candidate": ITEMS[:3]})
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.models.TwoTowerModel(query, item, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.layers.InBatchLogits(temperature=-0.1)
    with pytest.raises(ValueError, match="max_logit_scale"):
        tfmetric.layers.InBatchLogits(temperature=0.001, max_logit_scale=100.0)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6)])
    with pytest.raises(ValueError, match="same dimension"):
        tfmetric.models.TwoTowerModel(query, other)
    with pytest.raises(TypeError, match="query_tower"):
        tfmetric.models.TwoTowerModel(keras.layers.Dense(4), item)
    with pytest.raises(ValueError, match="`k`"):
        model.retrieve(QUERIES, ITEMS, k=0)


def test_logits_layer_checks_sizes_and_log_probabilities():
    q = RNG.normal(size=(4, 5)).astype("float32")
    layer = tfmetric.layers.InBatchLogits()
    cases = [
        (lambda: layer(q, q[:, :3]), "`query` and `candidate` must have the same embedding size"),
        (lambda: layer(q, q, np.zeros(3)), "`candidate_log_probability` has 3 entries"),
        (lambda: layer(q, q, np.zeros((4, 2))), "`candidate_log_probability` must have shape"),
        (lambda: layer(q, q, np.array([0.0, np.nan, 0.0, 0.0])), "`candidate_log_probability`"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    log_q = np.log(np.full((4, 1), 0.25))
    expected = _normalize(q) @ _normalize(q).T / 0.07 - log_q.T
    np.testing.assert_allclose(_np(layer(q, q, log_q)), expected, rtol=1e-5)


def test_predict_is_one_batch_of_in_batch_logits():
    # Logits compare each query with the candidates of its own batch: several batches' logits
    # formed a RaggedTensor (TensorFlow), a (N, batch) stack or a concatenation error (JAX).
    query, item = _towers()
    model = tfmetric.models.TwoTowerModel(query, item)
    x = {"query": QUERIES, "candidate": ITEMS}
    expected = (
        _normalize(query.predict(QUERIES, verbose=0))
        @ _normalize(item.predict(ITEMS, verbose=0)).T
        / 0.07
    )
    logits = model.predict(x, verbose=0)
    assert logits.shape == (N, N)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        model.predict(x, batch_size=N, verbose=0), expected, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match=r"`batch_size` \(8\) is below the 32 rows"):
        model.predict(x, batch_size=8, verbose=0)
    for batch in (16, 12):  # batches of equal and of different sizes
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(batch)
        with pytest.raises(ValueError, match="more than one batch"):
            model.predict(dataset, verbose=0)
    # The model still holds its weights (under JAX a failed loop would leave them empty).
    one_batch = tf.data.Dataset.from_tensor_slices(x).batch(N)
    np.testing.assert_allclose(model.predict(one_batch, verbose=0), expected, rtol=1e-4, atol=1e-4)
