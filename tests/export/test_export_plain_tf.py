"""The SavedModel serves without tfmetric: signatures, saved_model_cli, warm-up records."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfmetric

TOP_K = 3

# Loads the SavedModel with TensorFlow alone (importing tfmetric raises) and
# calls every signature; writes the outputs to an .npz.
PLAIN_TF_SCRIPT = textwrap.dedent(
    """
    import json, os, sys

    class BlockTfmetric:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tfmetric":
                raise ImportError("tfmetric must not be needed to serve")

    sys.meta_path.insert(0, BlockTfmetric())
    import numpy as np
    import tensorflow as tf

    export_dir, data_path, image_dir, out_path = sys.argv[1:]
    data = np.load(data_path)
    images = tf.constant([
        tf.io.read_file(os.path.join(image_dir, name)).numpy()
        for name in sorted(os.listdir(image_dir))
    ])
    model = tf.saved_model.load(export_dir)
    inputs = tf.constant(data["inputs"])
    out = {"signatures": np.array(sorted(model.signatures))}
    out["serving_default"] = model.signatures["serving_default"](inputs=inputs)["embeddings"]
    out["embed_images"] = model.signatures["embed_images"](images=images)["embeddings"]
    for name, kwargs in (("retrieve", {"inputs": inputs}), ("retrieve_images", {"images": images})):
        for key, value in model.signatures[name](**kwargs).items():
            if value.dtype == tf.string:
                value = np.char.decode(value.numpy().astype(bytes), "utf-8")
            out[f"{name}/{key}"] = value
    with open(model.metadata.asset_path.numpy().decode()) as f:
        out["metadata"] = np.array(json.dumps(json.load(f)))
    out["tfmetric_imported"] = np.array("tfmetric" in sys.modules)
    np.savez(out_path, **{k: np.asarray(v) for k, v in out.items()})
    """
)


@pytest.fixture(scope="module")
def exported(image_model, tmp_path_factory):
    model, x, y = image_model
    root = tmp_path_factory.mktemp("plain_tf")
    gallery_ids = np.array([f"sku-{i:03d}" for i in range(len(x))])
    result = tfmetric.export.export_for_serving(
        model,
        root / "models",
        name="shop",
        gallery={"inputs": x, "ids": gallery_ids, "labels": y},
        distance="cosine",
        top_k=TOP_K,
        parity=tfmetric.export.ParityOptions(latency_runs=0),
    )
    return result, model, x, y, gallery_ids, root


def _cosine_top_k(queries, gallery, k):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    distances = 1.0 - q @ g.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.slow
def test_signatures_in_a_process_without_tfmetric(exported):
    result, model, x, y, gallery_ids, root = exported
    queries = x[::5]
    np.savez(root / "queries.npz", inputs=queries)
    image_dir = root / "images"
    image_dir.mkdir()
    for i, image in enumerate(queries):
        png = tf.io.encode_png(np.round(image * 255).astype("uint8")).numpy()
        (image_dir / f"{i:03d}.png").write_bytes(png)
    script = root / "serve.py"
    script.write_text(PLAIN_TF_SCRIPT)
    out_path = root / "outputs.npz"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [
            sys.executable,
            str(script),
            result.path,
            str(root / "queries.npz"),
            str(image_dir),
            str(out_path),
        ],
        check=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    out = np.load(out_path)
    assert not out["tfmetric_imported"]
    assert sorted(out["signatures"]) == sorted(
        ["serving_default", "embed_images", "retrieve", "retrieve_images"]
    )

    expected = np.asarray(model(queries))
    np.testing.assert_allclose(out["serving_default"], expected, atol=1e-5)
    np.testing.assert_allclose(out["embed_images"], expected, atol=1e-5)

    gallery = np.asarray(model(x))
    order, distances = _cosine_top_k(expected, gallery, TOP_K)
    for prefix in ("retrieve", "retrieve_images"):
        assert out[f"{prefix}/ids"].shape == (len(queries), TOP_K)
        np.testing.assert_array_equal(out[f"{prefix}/ids"], gallery_ids[order])
        np.testing.assert_array_equal(out[f"{prefix}/indices"], order)
        np.testing.assert_array_equal(out[f"{prefix}/labels"], y[order])
        np.testing.assert_allclose(out[f"{prefix}/distances"], distances, atol=1e-5)

    metadata = json.loads(str(out["metadata"]))
    assert metadata["embedding_dim"] == 6
    assert metadata["distance"] == "cosine"
    assert metadata["image_spec"] == {"height": 16, "width": 16, "channels": 3, "scaling": "unit"}
    assert metadata["input"] == {"name": "inputs", "shape": [None, 16, 16, 3], "dtype": "float32"}
    assert metadata["gallery"] == {
        "size": len(x),
        "top_k": TOP_K,
        "ids_dtype": "string",
        "has_labels": True,
    }
    assert metadata["versions"]["tensorflow"] == tf.__version__
    assert metadata["versions"]["tfmetric"] == tfmetric.__version__


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    result = exported[0]
    shown = subprocess.run(
        ["saved_model_cli", "show", "--dir", result.path, "--all"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    ).stdout
    blocks = {}
    for block in shown.split("signature_def['")[1:]:
        name, _, body = block.partition("']")
        blocks[name] = body
    assert set(blocks) >= {"serving_default", "embed_images", "retrieve", "retrieve_images"}
    assert "inputs['inputs']" in blocks["serving_default"]
    assert "outputs['embeddings']" in blocks["serving_default"]
    assert "inputs['images']" in blocks["embed_images"]
    assert "dtype: DT_STRING" in blocks["embed_images"]
    for key in ("ids", "distances", "indices", "labels"):
        assert f"outputs['{key}']" in blocks["retrieve"]


def test_warmup_records_parse_and_run(exported, replay_warmup):
    result = exported[0]
    assert sorted(replay_warmup(result.path, "shop")) == sorted(result.signatures)
