import itertools
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric
from tfmetric.data import class_balanced_dataset, pair_dataset, triplet_dataset


def _data(counts=(6, 5, 4, 3, 2), seed=0):
    """x[i] = [i, i]: every element carries its own index, so batches can be checked."""
    y = np.concatenate([np.full(c, label) for label, c in enumerate(counts)])
    y = np.random.default_rng(seed).permutation(y) * 10 + 7  # arbitrary label values
    x = np.stack([np.arange(len(y))] * 2, axis=1).astype("float32")
    return x, y


def _take(dataset, n):
    return [
        (tf.nest.map_structure(np.asarray, xb), np.asarray(yb))
        for xb, yb in itertools.islice(dataset, n)
    ]


@pytest.mark.parametrize("p, k", [(2, 2), (3, 4), (5, 3)])
def test_pk_batches_have_p_classes_of_k_samples(p, k):
    x, y = _data()
    counts = {label: int(np.sum(y == label)) for label in np.unique(y)}
    for xb, yb in _take(class_balanced_dataset(x, y, p, k, seed=1), 30):
        assert xb.shape == (p * k, 2) and yb.shape == (p * k,)
        index = xb[:, 0].astype(int)
        np.testing.assert_array_equal(y[index], yb)  # labels belong to the gathered samples
        classes = yb.reshape(p, k)
        assert np.all(classes == classes[:, :1])  # laid out class by class
        assert len(set(classes[:, 0].tolist())) == p  # P distinct classes
        for row in index.reshape(p, k):
            label = y[row[0]]
            if counts[label] >= k:
                assert len(set(row.tolist())) == k  # distinct samples
            else:
                # every sample of a small class once, the rest drawn with replacement
                assert set(row.tolist()) == set(np.flatnonzero(y == label).tolist())


def test_pk_static_shape_and_every_class_drawn():
    x, y = _data()
    ds = class_balanced_dataset(x, y, 2, 3, seed=0)
    assert ds.element_spec[0].shape == (6, 2)
    seen = {int(label) for _, yb in _take(ds, 40) for label in yb}
    assert seen == set(np.unique(y).tolist())


@pytest.mark.parametrize(
    "make",
    [
        lambda x, y, s: class_balanced_dataset(x, y, 3, 2, seed=s),
        lambda x, y, s: pair_dataset(x, y, batch_size=8, seed=s),
        lambda x, y, s: triplet_dataset(x, y, batch_size=8, seed=s),
    ],
)
def test_deterministic_with_seed(make):
    x, y = _data()
    first = _take(make(x, y, 3), 5)
    again = _take(make(x, y, 3), 5)
    other = _take(make(x, y, 4), 5)
    for a, b in zip(first, again, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    flat = lambda batches: np.concatenate([np.ravel(b[1]) for b in batches])  # noqa: E731
    assert not np.array_equal(flat(first), flat(other))


def test_dataset_source_matches_arrays():
    x, y = _data()
    from_arrays = _take(class_balanced_dataset(x, y, 2, 2, seed=5), 3)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    from_dataset = _take(class_balanced_dataset(dataset, None, 2, 2, seed=5), 3)
    for a, b in zip(from_arrays, from_dataset, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)


def test_nested_inputs():
    x, y = _data()
    inputs = {"a": x, "b": x[:, :1] * 2}
    xb, yb = _take(class_balanced_dataset(inputs, y, 2, 2, seed=0), 1)[0]
    np.testing.assert_array_equal(xb["b"][:, 0], 2 * xb["a"][:, 0])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"y": np.zeros(20, int)}, ValueError, "at least 2 classes"),
        ({"classes_per_batch": 6}, ValueError, "classes_per_batch"),
        ({"classes_per_batch": 1}, ValueError, "classes_per_batch"),
        ({"samples_per_class": 1}, ValueError, "samples_per_class"),
        ({"y": np.zeros(17, int)}, ValueError, "same number of samples"),
        ({"y": None}, ValueError, "`y`"),
        ({"y": np.linspace(0, 1, 20)}, ValueError, "integer"),
        ({"seed": 1.5}, ValueError, "seed"),
        ({"augment": 3}, TypeError, "augment"),
    ],
)
def test_class_balanced_bad_input(kwargs, error, match):
    x, y = _data()
    args = {"y": y, "classes_per_batch": 2, "samples_per_class": 2, **kwargs}
    with pytest.raises(error, match=match):
        class_balanced_dataset(x, **args)


def test_dataset_source_errors():
    x, y = _data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match="`y` must be None"):
        class_balanced_dataset(dataset, y, 2, 2)
    with pytest.raises(ValueError, match="infinite"):
        class_balanced_dataset(dataset.repeat(), None, 2, 2)


def test_augment_function_and_layer():
    x, y = _data()
    xb, _ = _take(class_balanced_dataset(x, y, 2, 2, seed=0, augment=lambda b: b + 1000.0), 1)[0]
    assert np.all(xb >= 1000)
    layer = keras.layers.Rescaling(0.5)
    (x1, x2), _ = _take(pair_dataset(x, y, batch_size=4, seed=0, augment=layer), 1)[0]
    plain = _take(pair_dataset(x, y, batch_size=4, seed=0), 1)[0][0]
    np.testing.assert_allclose(x1, plain[0] * 0.5)
    np.testing.assert_allclose(x2, plain[1] * 0.5)


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 1.0])
def test_pairs(fraction):
    x, y = _data()
    for (x1, x2), same in _take(pair_dataset(x, y, 16, positive_fraction=fraction, seed=2), 10):
        i, j = x1[:, 0].astype(int), x2[:, 0].astype(int)
        assert same.dtype == np.float32 and same.shape == (16,)
        assert same.sum() == round(16 * fraction)
        np.testing.assert_array_equal(same == 1, y[i] == y[j])  # 1 = same class
        assert np.all(i[same == 1] != j[same == 1])  # a sample is never its own positive


def test_pairs_bad_input():
    x, y = _data()
    with pytest.raises(ValueError, match="positive_fraction"):
        pair_dataset(x, y, positive_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        pair_dataset(x, y, batch_size=0)
    with pytest.raises(ValueError, match="similar pair"):
        pair_dataset(x[:3], np.arange(3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        pair_dataset(x[:3], np.zeros(3, int))


def test_random_triplets():
    x, y = _data((4, 1, 3, 1))
    for (a, p, n), labels in _take(triplet_dataset(x, y, 12, seed=0), 10):
        ia, ip, i_n = (t[:, 0].astype(int) for t in (a, p, n))
        np.testing.assert_array_equal(labels, np.stack([y[ia], y[ip], y[i_n]], 1))
        assert np.all(y[ia] == y[ip]) and np.all(ia != ip) and np.all(y[ia] != y[i_n])


def test_triplet_bad_input():
    x, y = _data()
    with pytest.raises(ValueError, match="K >= 2"):
        triplet_dataset(x[:5], np.arange(5))
    with pytest.raises(ValueError, match="mining"):
        triplet_dataset(x, y, mining="hardest")
    with pytest.raises(ValueError, match="embedder"):
        triplet_dataset(x, y, mining="hard")
    with pytest.raises(ValueError, match="refresh_every"):
        triplet_dataset(x, y, mining="hard", embedder=keras.layers.Identity(), refresh_every=0)


@pytest.mark.parametrize("sampler", [triplet_dataset, pair_dataset])
def test_offline_mining_bad_input(sampler):
    x, y = _data((4, 4, 4))
    embedder = keras.layers.Identity()
    mine = dict(embedder=embedder, mining="hard")
    with pytest.raises(ValueError, match="refresh_every"):
        sampler(x, y, refresh_every=-2, **mine)
    with pytest.raises(ValueError, match="pool_size.*larger than the data"):
        sampler(x, y, pool_size=13, **mine)
    with pytest.raises(ValueError, match="pool_size"):
        sampler(x, y, pool_size=1, **mine)
    with pytest.raises(ValueError, match="single sample"):
        sampler(x[:9], np.array([0, 0, 0, 1, 1, 1, 2, 2, 3]), **mine)
    with pytest.raises(ValueError, match="at least 2 classes"):
        sampler(x[:4], np.zeros(4, int), **mine)
    with pytest.raises(ValueError, match="mining"):
        sampler(x, y, embedder=embedder, mining="all")
    with pytest.raises(ValueError, match="embedder"):
        sampler(x, y, mining="easy")


def _linear_embedder(scale):
    """Embeds x[i] = [i, i] to [scale * i]: distances are known exactly."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(np.array([[scale], [0.0]], "float32"))
    return model


def _brute_force(y, emb, anchor, positive, mining):
    d = np.abs(emb[anchor, 0] - emb[:, 0])
    same = y == y[anchor]
    pos = same.copy()
    pos[anchor] = False
    if mining == "hard":
        return d[pos].max(), d[~same].min()
    if mining == "easy":
        return d[pos].min(), d[~same].max()
    farther = (~same) & (d > d[positive])
    return d[positive], (d[farther].min() if farther.any() else d[~same].max())


@pytest.mark.parametrize("mining", ["hard", "semi-hard", "easy"])
def test_offline_mining_picks_hard_and_semi_hard_triplets(mining):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    order = rng.permutation(24)
    x = np.stack([order, order], 1).astype("float32")  # index-free positions: embedding = order
    embedder = _linear_embedder(1.0)
    ds = triplet_dataset(x, y, 8, seed=0, embedder=embedder, mining=mining, refresh_every=2)
    position = {int(v): i for i, v in enumerate(order)}
    for (a, p, n), _ in _take(ds, 4):
        for row in range(8):
            ia, ip, i_n = (position[int(t[row, 0])] for t in (a, p, n))
            assert y[ia] == y[ip] and ia != ip and y[ia] != y[i_n]
            want_p, want_n = _brute_force(y, x, ia, ip, mining)
            assert abs(x[ia, 0] - x[ip, 0]) == want_p
            assert abs(x[ia, 0] - x[i_n, 0]) == want_n


def test_offline_mining_uses_current_weights():
    y = np.repeat(np.arange(3), 4)
    x = np.stack([np.arange(12)] * 2, 1).astype("float32")
    embedder = _linear_embedder(1.0)
    ds = triplet_dataset(x, y, 6, seed=0, embedder=embedder, mining="hard", refresh_every=1)
    first = _take(ds, 1)[0][0]
    # A constant embedding: every distance is 0 and argmin picks the first negative by index.
    embedder.layers[0].kernel.assign(np.zeros((2, 1), "float32"))
    second = _take(ds, 1)[0][0]
    a1, n1 = first[0][:, 0].astype(int), first[2][:, 0].astype(int)
    a2, n2 = second[0][:, 0].astype(int), second[2][:, 0].astype(int)
    np.testing.assert_array_equal(a1, a2)  # same anchors: same seed and chunk
    first_negative = np.array([4 if y[i] == 0 else 0 for i in a2])
    np.testing.assert_array_equal(n2, first_negative)
    assert not np.array_equal(n1, n2)


def test_class_balanced_trains_in_batch_loss_with_jit():
    x, y = _data((8, 8, 8, 8))
    x = x + np.random.default_rng(0).normal(size=x.shape).astype("float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    model.compile(
        optimizer="adam", loss=tfmetric.losses.TripletLoss(mining="hard"), jit_compile=True
    )
    history = model.fit(class_balanced_dataset(x, y, 3, 4, seed=0), steps_per_epoch=3, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_offline_mining_in_a_random_pool():
    y = np.repeat(np.arange(4), 6)
    x = np.stack([np.arange(24)] * 2, 1).astype("float32")
    embedder = _linear_embedder(1.0)
    ds = triplet_dataset(
        x, y, 8, seed=0, embedder=embedder, mining="hard", refresh_every=2, pool_size=8
    )
    batches = _take(ds, 4)
    for chunk in (batches[:2], batches[2:]):
        used = set()
        for (a, p, n), _ in chunk:
            ia, ip, i_n = (t[:, 0].astype(int) for t in (a, p, n))
            assert np.all(y[ia] == y[ip]) and np.all(ia != ip) and np.all(y[ia] != y[i_n])
            used |= set(ia) | set(ip) | set(i_n)
        assert len(used) <= 8  # anchors, positives and negatives all come from one pool
    with pytest.raises(ValueError, match="pool_size"):
        triplet_dataset(x, y, embedder=embedder, mining="hard", pool_size=1)


_EXIT_SCRIPT = """
import atexit, time
import keras, numpy as np, tensorflow as tf
hooks = atexit._ncallbacks()
import tfmetric
assert atexit._ncallbacks() == hooks, "import tfmetric registered an atexit hook"
rng = np.random.default_rng(0)
x = rng.normal(size=(6000, 64)).astype("float32")
y = rng.integers(0, 50, 6000)
embedder = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16)])
ds = tfmetric.data.triplet_dataset(
    x, y, 32, seed=0, embedder=embedder, mining="semi-hard", refresh_every=2
)
iterator = iter(ds)

@tf.function
def consume(count):
    for _ in tf.range(count):
        next(iterator)
    return count

consume(tf.constant(5))
print("consumed", time.monotonic(), flush=True)
"""


_ROOT = os.path.dirname(os.path.dirname(tfmetric.__file__))


def test_no_exit_hook_and_prompt_exit_while_a_refresh_is_pending(tmp_path):
    # Mining runs in the tf.data graph (no Python function in the pipeline), so nothing needs
    # an exit hook: `import tfmetric` registers none and the process exits at once while the
    # next chunk is being mined in the background.
    script = tmp_path / "exit_while_mining.py"  # A file: AutoGraph reads the loop's source.
    script.write_text(_EXIT_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": _ROOT},
    )
    ended = time.monotonic()
    assert result.returncode == 0, result.stderr[-2000:]
    assert "consumed" in result.stdout
    printed = float(result.stdout.split("consumed")[1].split()[0])
    assert ended - printed < 10.0


def test_no_python_functions_in_the_data_pipelines():
    folder = os.path.dirname(tfmetric.data.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name)) as handle:
                text = handle.read()
            for banned in ("py_function", "numpy_function", "atexit"):
                assert banned not in text, f"{name} uses {banned}"


@pytest.mark.parametrize("mining", ["hard", "semi-hard", "easy"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine", "inner_product"])
def test_offline_mining_matches_a_brute_force_search(mining, distance):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 7, 90)
    x = rng.normal(size=(90, 5)).astype("float32")
    x = np.concatenate([np.arange(90, dtype="float32")[:, None], x], 1)  # column 0: the index
    embedder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    emb = embedder.predict(x, verbose=0).astype(np.float64)
    if distance == "euclidean":
        d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    elif distance == "cosine":
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        d = 1.0 - unit @ unit.T
    else:
        d = -(emb @ emb.T)  # a similarity: mining uses its negation as a distance
    ds = triplet_dataset(
        x, y, 16, seed=3, embedder=embedder, mining=mining, refresh_every=3, distance=distance
    )
    for (a, p, n), _ in _take(ds, 6):
        for ia, ip, i_n in zip(*(t[:, 0].astype(int) for t in (a, p, n)), strict=True):
            assert y[ia] == y[ip] and ia != ip and y[ia] != y[i_n]
            positives = (y == y[ia]) & (np.arange(90) != ia)
            negatives = y != y[ia]
            if mining == "hard":
                np.testing.assert_allclose(d[ia, ip], d[ia, positives].max(), atol=1e-5)
                np.testing.assert_allclose(d[ia, i_n], d[ia, negatives].min(), atol=1e-5)
            elif mining == "easy":
                np.testing.assert_allclose(d[ia, ip], d[ia, positives].min(), atol=1e-5)
                np.testing.assert_allclose(d[ia, i_n], d[ia, negatives].max(), atol=1e-5)
            else:
                # Float32 rounding decides negatives within `tol` of d(a, p) either way.
                tol, d_an, d_ap = 1e-5, d[ia, i_n], d[ia, ip]
                loose = negatives & (d[ia] > d_ap - tol)
                strict = negatives & (d[ia] > d_ap + tol)
                if strict.any():
                    assert d[ia, loose].min() - tol <= d_an <= d[ia, strict].min() + tol
                elif loose.any():
                    assert d_an >= d[ia, loose].min() - tol or d_an >= d[ia, negatives].max() - tol
                else:
                    np.testing.assert_allclose(d_an, d[ia, negatives].max(), atol=tol)


@pytest.mark.parametrize("mining", ["hard", "easy", "semi-hard"])
def test_mined_pairs_match_a_brute_force_search(mining):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 60)
    x = rng.normal(size=(60, 4)).astype("float32")
    x = np.concatenate([np.arange(60, dtype="float32")[:, None], x], 1)  # column 0: the index
    embedder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    emb = embedder.predict(x, verbose=0).astype(np.float64)
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    ds = pair_dataset(
        x, y, 10, positive_fraction=0.4, seed=1, embedder=embedder, mining=mining, refresh_every=2
    )
    for (x1, x2), same in _take(ds, 4):
        assert same.sum() == 4
        for i1, i2, s in zip(x1[:, 0].astype(int), x2[:, 0].astype(int), same, strict=True):
            positives = (y == y[i1]) & (np.arange(60) != i1)
            negatives = y != y[i1]
            if s == 1:
                assert positives[i2]
                if mining != "semi-hard":
                    pick = d[i1, positives].max() if mining == "hard" else d[i1, positives].min()
                    np.testing.assert_allclose(d[i1, i2], pick, atol=1e-5)
            else:
                assert negatives[i2]
                if mining != "semi-hard":
                    pick = d[i1, negatives].min() if mining == "hard" else d[i1, negatives].max()
                    np.testing.assert_allclose(d[i1, i2], pick, atol=1e-5)


class _NaNEmbedding(keras.layers.Layer):
    def call(self, x):
        return x * float("nan")


@pytest.mark.tf_only
@pytest.mark.parametrize("sampler", [triplet_dataset, pair_dataset])
def test_offline_mining_refuses_nan_embeddings(sampler):
    x, y = _data((4, 4, 4))
    embedder = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2), _NaNEmbedding()])
    ds = sampler(x, y, 4, seed=0, embedder=embedder, mining="hard", refresh_every=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="`embedder` returned NaN or infinite"):
        next(iter(ds))


@pytest.mark.parametrize("sampler", [triplet_dataset, pair_dataset])
@pytest.mark.parametrize("twin", [tfmetric.models.SiameseModel, tfmetric.models.TripletModel])
def test_offline_mining_asks_for_the_shared_tower_of_a_twin_model(sampler, twin):
    x, y = _data((4, 4, 4))
    model = twin(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]))
    with pytest.raises(TypeError, match=rf"`embedder` is a {twin.__name__}.*pass `model.embedder`"):
        sampler(x, y, 4, seed=0, embedder=model, mining="hard")
    sampler(x, y, 4, seed=0, embedder=model.embedder, mining="hard")  # its tower is accepted


@pytest.mark.parametrize("sampler", [triplet_dataset, pair_dataset])
def test_batched_dataset_is_asked_to_unbatch(sampler):
    x, y = _data()
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    with pytest.raises(ValueError, match=r"labels have shape \(None,\) per element.*`x.unbatch\(\)`"):
        sampler(batched, batch_size=4, seed=0)
    (first, _), same = next(iter(pair_dataset(batched.unbatch(), batch_size=4, seed=0)))
    assert first.shape == (4, 2) and same.shape == (4,)
