"""Versioned TF Serving layout, metadata, bad input, atomicity (in-process, no TFLite)."""

import json
import os

import keras
import numpy as np
import pytest

import tfmetric


def _export(model, out, **kwargs):
    kwargs.setdefault("parity", tfmetric.export.ParityOptions(latency_runs=0))
    return tfmetric.export.export_for_serving(model, out, **kwargs)


def _snapshot(path):
    """Every path under `path` with its size: what "nothing written" compares."""
    if not os.path.exists(path):
        return None
    return sorted(
        (os.path.relpath(os.path.join(root, name), path), os.path.getsize(os.path.join(root, name)))
        for root, dirs, files in os.walk(path)
        for name in dirs + files
    )


def test_versions_models_config_and_metadata(vector_model, tmp_path):
    model, x, y = vector_model
    out = tmp_path / "models"
    first = _export(model, out, name="products", distance="euclidean", l2_normalize=True)
    second = _export(model, out, name="products")
    other = _export(model, out, name="faces", serving_base_path="/srv/models/")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert sorted(os.listdir(out / "products")) == ["1", "2"]
    assert first.path == str(out / "products" / "1")
    assert first.signatures == ["serving_default"]
    for entry in ("saved_model.pb", "variables", "parity.json", "assets", "assets.extra"):
        assert os.path.exists(os.path.join(first.path, entry)), entry

    config = (out / "models.config").read_text()
    assert config.count("config {") == 2
    assert 'name: "products"' in config and 'base_path: "/srv/models/products"' in config
    assert 'name: "faces"' in config and 'model_platform: "tensorflow"' in config

    with open(os.path.join(first.path, "assets", "tfmetric_export.json")) as f:
        metadata = json.load(f)
    assert metadata["embedding_dim"] == 8
    assert metadata["distance"] == "euclidean"
    assert metadata["normalization"]["l2_normalize_in_export"] is True
    assert metadata["image_spec"] is None
    assert metadata["input"]["shape"] == [None, 12]
    assert metadata["signatures"] == ["serving_default"]
    assert metadata["versions"]["keras"] == keras.__version__

    # l2_normalize=True: unit-norm embeddings, same direction as the Keras ones.
    loaded = keras.layers.TFSMLayer(first.path, call_endpoint="serving_default")
    got = np.asarray(loaded(x[:5])["embeddings"])
    expected = np.asarray(model(x[:5]))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        got, expected / np.linalg.norm(expected, axis=1, keepdims=True), atol=1e-6
    )


def test_gallery_of_embeddings_with_inner_product(vector_model, tmp_path):
    model, x, _ = vector_model
    gallery = np.random.default_rng(0).normal(size=(7, 8)).astype("float32")
    result = _export(
        model,
        tmp_path,
        name="m",
        distance="inner_product",
        top_k=20,
        gallery={"embeddings": gallery},
    )
    retrieve = keras.layers.TFSMLayer(result.path, call_endpoint="retrieve")
    out = {k: np.asarray(v) for k, v in retrieve(x[:4]).items()}
    scores = np.asarray(model(x[:4])) @ gallery.T
    order = np.argsort(-scores, axis=1, kind="stable")
    # top_k is capped at the gallery size; similarities come largest first.
    np.testing.assert_array_equal(out["ids"], order)
    np.testing.assert_allclose(out["distances"], np.take_along_axis(scores, order, 1), rtol=1e-5)
    assert "labels" not in out


def test_model_with_embedder_attribute_exports_the_embedder(vector_model, tmp_path):
    embedder, x, y = vector_model
    model = tfmetric.models.ProxyModel(embedder, tfmetric.layers.CosFace(num_classes=4))
    path = tmp_path / "proxy.keras"
    model.save(path)
    result = _export(str(path), tmp_path / "out")
    assert result.path == str(tmp_path / "out" / "proxy" / "1")
    loaded = keras.layers.TFSMLayer(result.path, call_endpoint="serving_default")
    np.testing.assert_allclose(
        np.asarray(loaded(x[:3])["embeddings"]), np.asarray(embedder(x[:3])), atol=1e-5
    )


def _two_outputs():
    inputs = keras.Input((4,))
    return keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])


def _two_inputs():
    a, b = keras.Input((4,)), keras.Input((4,))
    return keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))


def _sequence_output():
    return keras.Sequential([keras.Input((5, 4)), keras.layers.Dense(2)])


@pytest.mark.parametrize("build", [_two_outputs, _two_inputs, _sequence_output])
def test_not_an_embedding_model(build, tmp_path):
    path = tmp_path / "model.keras"
    build().save(path)
    with pytest.raises(ValueError, match="not an embedding model"):
        _export(str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_input_writes_nothing(vector_model, tmp_path):
    model, x, _ = vector_model
    out = tmp_path / "models"
    _export(model, out, name="kept")
    before = _snapshot(out)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        _export(str(tmp_path / "missing.keras"), out)
    with pytest.raises(FileNotFoundError, match="`gallery`"):
        _export(model, out, gallery=str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "wide.npz", embeddings=np.zeros((3, 9), "float32"))
    with pytest.raises(ValueError, match="dimension 9 but the model outputs 8"):
        _export(model, out, gallery=str(tmp_path / "wide.npz"))
    with pytest.raises(ValueError, match="`gallery` inputs have shape"):
        _export(model, out, gallery={"inputs": np.zeros((3, 5), "float32")})
    with pytest.raises(ValueError, match="`tflite` variants"):
        _export(model, out, tflite="fp32,int4")
    with pytest.raises(ValueError, match="`name`"):
        _export(model, out, name="../escape")
    with pytest.raises(ValueError, match="not an image"):
        _export(model, out, image_spec=tfmetric.export.ImageSpec(32, 32))
    with pytest.raises(ValueError, match="`int8` TFLite variant needs a `representative`"):
        _export(model, out, tflite=["int8"], validation=None)
    assert _snapshot(out) == before

    cluttered = tmp_path / "cluttered"
    cluttered.mkdir()
    (cluttered / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a TF Serving base"):
        _export(model, cluttered)
    assert os.listdir(cluttered) == ["notes.txt"]
    with pytest.raises(ValueError, match="holds model versions itself"):
        _export(model, out / "kept")
    assert _snapshot(out) == before


def test_failure_before_publishing_leaves_no_version(vector_model, tmp_path, monkeypatch):
    model, _, _ = vector_model
    seen = []

    def fail(tmp_dir, base_dir):
        seen.append(sorted(os.listdir(tmp_dir)))
        raise RuntimeError("injected failure")

    monkeypatch.setattr(tfmetric.export.serving_layout, "_publish", fail)
    with pytest.raises(RuntimeError, match="injected"):
        _export(model, tmp_path, name="m")
    # The failure came once the version was complete, and it was removed.
    assert {"saved_model.pb", "assets.extra", "parity.json"} <= set(seen[0])
    assert os.listdir(tmp_path / "m") == []
    assert not (tmp_path / "models.config").exists()
    monkeypatch.undo()
    assert _export(model, tmp_path, name="m").version == 1


def test_triplet_model_file_gives_its_embedder_and_distance(vector_model, tmp_path):
    embedder, x, _ = vector_model
    model = tfmetric.models.TripletModel(embedder, distance="manhattan")
    model.compile(optimizer="adam")
    model.predict((x[:2], x[:2], x[:2]), verbose=0)
    model.save(tmp_path / "triplets.keras")
    result = _export(
        str(tmp_path / "triplets.keras"),
        tmp_path / "out",
        gallery={"embeddings": np.asarray(embedder(x))},
    )
    assert result.metadata["distance"] == "manhattan"
    assert result.metadata["source_model"] == embedder.name
    retrieve = keras.layers.TFSMLayer(result.path, call_endpoint="retrieve")
    out = retrieve(x[:3])
    manhattan = np.abs(np.asarray(embedder(x[:3]))[:, None] - np.asarray(embedder(x))).sum(-1)
    np.testing.assert_array_equal(
        np.asarray(out["indices"]), np.argsort(manhattan, axis=1, kind="stable")[:, :10]
    )


def test_retrieve_agrees_with_exact_index(vector_model, tmp_path):
    model, x, y = vector_model
    gallery = np.asarray(model(x))
    result = _export(
        model,
        tmp_path,
        name="m",
        distance="euclidean",
        top_k=4,
        gallery={"embeddings": gallery, "labels": y},
    )
    retrieve = keras.layers.TFSMLayer(result.path, call_endpoint="retrieve")
    out = {k: np.asarray(v) for k, v in retrieve(x[::7]).items()}
    index = tfmetric.index.ExactIndex(distance="euclidean")
    index.add(gallery, labels=y)
    ids, distances, labels = index.search(np.asarray(model(x[::7])), k=4)
    np.testing.assert_array_equal(out["ids"], ids)
    np.testing.assert_array_equal(out["labels"], labels)
    # sqrt(|q|² + |g|² - 2 q·g) loses ~sqrt(eps) |q| near zero; XLA rounds differently.
    np.testing.assert_allclose(out["distances"], distances, rtol=1e-4, atol=5e-3)


def test_l2_normalize_applies_to_the_gallery(vector_model, tmp_path):
    model, x, _ = vector_model
    result = _export(
        model,
        tmp_path,
        name="m",
        distance="euclidean",
        l2_normalize=True,
        top_k=3,
        gallery={"inputs": x},
    )
    out = keras.layers.TFSMLayer(result.path, call_endpoint="retrieve")(x[:4])
    unit = np.asarray(model(x))
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    distances = np.linalg.norm(unit[:4, None] - unit[None], axis=-1)
    order = np.argsort(distances, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(np.asarray(out["indices"]), order)
    np.testing.assert_allclose(
        np.asarray(out["distances"]), np.take_along_axis(distances, order, 1), atol=2e-3
    )


def test_failed_models_config_write_leaves_no_temporary_file(vector_model, tmp_path):
    model, _, _ = vector_model
    _export(model, tmp_path, name="m")
    before = (tmp_path / "models.config").read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="disk full"):
            tfmetric.export.write_models_config(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["m", "models.config"]
    assert (tmp_path / "models.config").read_text() == before


def test_save_embedder_never_overwrites_a_saved_model(vector_model, tmp_path):
    import tensorflow as tf

    model, x, _ = vector_model
    path = tmp_path / "embedder"
    assert tfmetric.export.save_embedder(path, model) == ["serving_default"]
    before = _snapshot(path)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match=r"`path` .* already holds a SavedModel"):
        tfmetric.export.save_embedder(path, other)
    assert _snapshot(path) == before
    serving = tf.saved_model.load(str(path)).signatures["serving_default"]
    np.testing.assert_allclose(
        serving(inputs=tf.constant(x[:4]))["embeddings"].numpy(), np.asarray(model(x[:4])),
        atol=1e-5,
    )
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files"):
        tfmetric.export.save_embedder(tmp_path / "notes", other)
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        tfmetric.export.save_embedder(tmp_path / "afile", other)
    with pytest.raises(ValueError, match="afile' is not a directory"):
        tfmetric.export.save_embedder(tmp_path / "afile" / "sub", other)
    # An empty directory is written; no temporary directory is left beside it.
    (tmp_path / "empty").mkdir()
    assert tfmetric.export.save_embedder(tmp_path / "empty", other) == ["serving_default"]
    assert (tmp_path / "empty" / "saved_model.pb").is_file()
    assert sorted(os.listdir(tmp_path)) == ["afile", "embedder", "empty", "notes"]
    assert (tmp_path / "afile").read_text() == (tmp_path / "notes" / "a.txt").read_text() == "mine"


USER_MODELS_CONFIG = """model_config_list {
  config {
    name: "tiny"
    base_path: "/models/tiny"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 } }
  }
  config {
    name: "other"
    base_path: "/elsewhere/other"
    model_platform: "tensorflow"
  }
}
"""


def test_models_config_edited_by_the_user_is_kept(vector_model, tmp_path):
    model, _, _ = vector_model
    _export(model, tmp_path, name="tiny")
    written = (tmp_path / "models.config").read_text()
    assert written.startswith("# Written by tfmetric.export")
    # The user pins version 1 and serves a model stored elsewhere; a re-export keeps that.
    (tmp_path / "models.config").write_text(USER_MODELS_CONFIG)
    assert _export(model, tmp_path, name="tiny").version == 2
    assert (tmp_path / "models.config").read_text() == USER_MODELS_CONFIG
    # A model the user's file does not list: the file is still kept, and a warning names it.
    with pytest.warns(UserWarning, match=r"models.config was not written by tfmetric.*\['new'\]"):
        _export(model, tmp_path, name="new")
    assert (tmp_path / "models.config").read_text() == USER_MODELS_CONFIG


def test_models_config_written_by_tfmetric_is_refreshed(vector_model, tmp_path):
    model, _, _ = vector_model
    _export(model, tmp_path, name="a")
    _export(model, tmp_path, name="b", serving_base_path="/srv")
    config = (tmp_path / "models.config").read_text()
    assert config.startswith("# Written by tfmetric.export")
    assert 'name: "a"' in config and 'base_path: "/srv/b"' in config
    # A file as tfmetric wrote it before the header existed is refreshed too.
    legacy = (
        'model_config_list {\n  config {\n    name: "a"\n    base_path: "/models/a"\n'
        '    model_platform: "tensorflow"\n  }\n}\n'
    )
    (tmp_path / "models.config").write_text(legacy)
    _export(model, tmp_path, name="c")
    config = (tmp_path / "models.config").read_text()
    assert config.startswith("# Written by tfmetric.export")
    assert config.count("config {") == 3 and 'name: "c"' in config


def test_gallery_of_bfloat16_embeddings_is_float32():
    import ml_dtypes

    from tfmetric.export.gallery import load_gallery

    values = np.array([[1.5, -2.0, 0.25], [3.0, 0.5, -1.0]], "float32")
    gallery = load_gallery(
        {"embeddings": values.astype(ml_dtypes.bfloat16), "labels": np.array([0, 1])},
        None,
        (3,),
        3,
    )
    assert gallery.embeddings.dtype == np.float32
    np.testing.assert_array_equal(gallery.embeddings, values)  # exact in bfloat16
    with pytest.raises(ValueError, match="`gallery` `embeddings` must be a 2-D float array"):
        load_gallery({"embeddings": np.array([[1, 2, 3]])}, None, (3,), 3)
