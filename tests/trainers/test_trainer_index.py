"""The similar-items command: build a store from a catalogue, query it, bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainers import index as cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(path, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(4)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    keras.Model(inputs, outputs).save(path)
    return keras.saving.load_model(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    model_path = str(root / "model.keras")
    model = _model(model_path)
    store_path = str(root / "digits.db")
    count = cli.build(model_path, "digits", store_path)
    return model, model_path, store_path, count


def _digits():
    from trainers.datasets import load_digits

    return load_digits()


def test_build_then_query_by_item_matches_brute_force(built):
    model, model_path, store_path, count = built
    data = _digits()
    assert count == len(data)
    embeddings = np.asarray(model(data.x.astype("float32")))
    results = cli.query(model_path, store_path, item="5", k=4)["item"]
    d = np.sqrt(((embeddings - embeddings[5]) ** 2).sum(1))
    d[5] = np.inf
    expected = np.argsort(d, kind="stable")[:4]
    assert [m.id for m in results] == expected.tolist()
    np.testing.assert_allclose([m.distance for m in results], d[expected], rtol=1e-4, atol=1e-5)
    assert results[0].metadata == {"class": int(data.y[expected[0]])}
    filtered = cli.query(model_path, store_path, item="5", k=3, where=["class=7"])["item"]
    sevens = np.where(data.y == 7)[0]
    assert [m.id for m in filtered] == sevens[np.argsort(d[sevens], kind="stable")[:3]].tolist()


def test_query_by_image(built, tmp_path):
    model, model_path, store_path, _ = built
    data = _digits()
    image = str(tmp_path / "query.png")
    tf.io.write_file(image, tf.io.encode_png(data.x[10]))
    (match,) = cli.query(model_path, store_path, image=image, k=1)["image"]
    assert match.id == 10 and match.distance < 1e-4


def test_directory_catalogue_with_extra_metadata(tmp_path):
    model_path = str(tmp_path / "model.keras")
    _model(model_path)
    data = _digits()
    for i in range(6):
        folder = tmp_path / "shop" / f"shelf{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(data.x[i]))
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "shelf1/3.png", "price": 9.5}) + "\n")
    store = str(tmp_path / "shop.db")
    assert cli.build(model_path, f"directory:{tmp_path / 'shop'}", store,
                     metadata_path=str(extra)) == 6
    (match,) = cli.query(model_path, store, image=str(tmp_path / "shop/shelf1/3.png"), k=1)["image"]
    assert match.id == "shelf1/3.png"
    assert match.metadata == {"path": "shelf1/3.png", "folder": "shelf1", "price": 9.5}
    results = cli.query(model_path, store, item="shelf1/3.png", k=5, where=["folder=shelf0"])
    assert sorted(m.id for m in results["item"]) == ["shelf0/0.png", "shelf0/2.png", "shelf0/4.png"]


@pytest.mark.slow
def test_command_line(built):
    _, model_path, store_path, _ = built
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "trainers.index", *args], capture_output=True,
                              text=True, cwd=REPO, env=env, timeout=300)

    done = run("query", f"--model={model_path}", f"--store={store_path}", "--item=5", "--k=2",
               "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout)["item"]) == 2
    done = run("query", f"--model={model_path}", f"--store={store_path}", "--item=nope")
    assert done.returncode == 1 and "`--item` 'nope': no such item" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_input_is_explained(built, tmp_path):
    _, model_path, store_path, _ = built
    other = str(tmp_path / "other.keras")
    _model(other, seed=1)
    with pytest.raises(ValueError, match="model version"):
        cli.build(other, "digits", store_path)
    with pytest.raises(cli.InputError, match="`--catalogue` must be"):
        cli.build(model_path, "books", store_path)
    assert cli.main(["index", "frobnicate"]) == 2
    with pytest.raises(cli.InputError, match="`--model`"):
        cli.build(str(tmp_path / "missing.keras"), "digits", store_path)
    with pytest.raises(cli.InputError, match="Give `--item`"):
        cli.query(model_path, store_path)
    with pytest.raises(cli.InputError, match="`--where` must be field=value"):
        cli.query(model_path, store_path, item="1", where=["class"])
    with pytest.raises(cli.InputError, match="no such folder"):
        cli.build(model_path, f"directory:{tmp_path / 'nope'}", str(tmp_path / "x.db"))
    text = tmp_path / "not_a_store.db"
    text.write_text("plain text, not a database " * 20)
    with pytest.raises(ValueError, match="not a tfmetric store"):
        cli.query(model_path, str(text), item="1")


def test_redis_store_from_the_command(built, tmp_path):
    from redis_server import RedisServer

    model, model_path, sqlite_path, count = built
    server = RedisServer(tmp_path)
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        assert cli.build(model_path, "digits", url, namespace="shop") == count
        on_redis = cli.query(model_path, url, item="5", k=4, namespace="shop")["item"]
        on_sqlite = cli.query(model_path, sqlite_path, item="5", k=4)["item"]
        assert [m.id for m in on_redis] == [m.id for m in on_sqlite]
        assert [m.metadata for m in on_redis] == [m.metadata for m in on_sqlite]
    finally:
        server.stop()


def _write_png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(pixels))


def test_a_failed_build_leaves_the_store_as_it_was(tmp_path):
    """An unreadable image after the first batch: nothing written, not a half-built store."""
    model_path = str(tmp_path / "model.keras")
    _model(model_path)
    data = _digits()
    shop = tmp_path / "shop"
    for i in range(cli._BATCH + 4):  # more than one batch
        _write_png(shop / f"{i:04d}.png", data.x[i])
    (shop / "zzzz.png").write_bytes(b"not an image")  # sorted last: in the second batch
    store = str(tmp_path / "shop.db")
    with pytest.raises(ValueError, match="zzzz.png"):
        cli.build(model_path, f"directory:{shop}", store)
    assert not os.path.exists(store)
    # Over an existing store: the failed re-build changes nothing in it.
    (shop / "zzzz.png").unlink()
    assert cli.build(model_path, f"directory:{shop}", store) == cli._BATCH + 4
    before = cli.query(model_path, store, item="0003.png", k=3)["item"]
    for i in range(cli._BATCH + 4):
        _write_png(shop / f"{i:04d}.png", data.x[-1 - i])  # new pictures under the same ids
    (shop / "zzzz.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="zzzz.png"):
        cli.build(model_path, f"directory:{shop}", store)
    assert cli.query(model_path, store, item="0003.png", k=3)["item"] == before


def test_a_model_that_does_not_fit_the_catalogue_is_named(tmp_path):
    model_path = str(tmp_path / "rgb.keras")
    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs))).save(model_path)
    store = str(tmp_path / "digits.db")
    with pytest.raises(cli.InputError, match=r"`--model` takes inputs of shape \(16, 16, 3\)"):
        cli.build(model_path, "digits", store)
    assert not os.path.exists(store)


def test_where_matches_numbers_stored_as_text(tmp_path):
    """`--where=folder=1` finds folder "1"; `--where=class=3` the class "3" of an npz catalogue."""
    model_path = str(tmp_path / "model.keras")
    model = _model(model_path)
    data = _digits()
    for i in range(12):
        _write_png(tmp_path / "shop" / str(i % 3) / f"{i}.png", data.x[i])
    store = str(tmp_path / "shop.db")
    cli.build(model_path, f"directory:{tmp_path / 'shop'}", store)
    found = cli.query(model_path, store, item="0/0.png", k=10, where=["folder=1"])["item"]
    assert sorted(m.id for m in found) == sorted(f"1/{i}.png" for i in (1, 4, 7, 10))
    assert all(m.metadata["folder"] == "1" for m in found)

    np.savez(tmp_path / "items.npz", x=data.x[:40, ..., 0], y=data.y[:40])
    npz_store = str(tmp_path / "npz.db")
    cli.build(model_path, f"npz:{tmp_path / 'items.npz'}", npz_store)
    found = cli.query(model_path, npz_store, item="0", k=3, where=["class=3"])["item"]
    embeddings = np.asarray(model(data.x[:40].astype("float32")))
    d = np.sqrt(((embeddings - embeddings[0]) ** 2).sum(1))
    threes = np.flatnonzero(data.y[:40] == 3)
    assert [m.id for m in found] == threes[np.argsort(d[threes], kind="stable")[:3]].tolist()
    np.testing.assert_allclose([m.distance for m in found], np.sort(d[threes])[:3], rtol=1e-4,
                               atol=1e-5)  # fmt: skip
