"""tfmetric.addons against float64 numpy references: values, gradients, edge cases."""

import addons_reference as ref
import numpy as np
import pytest
import tensorflow as tf
from keras import ops
from references import numeric_gradient

from tfmetric import addons

METRICS = ["L2", "squared-L2", "angular"]


def _batch(n=10, d=4, classes=3, seed=0, singletons=False):
    """Labels with every class at least twice (or, with `singletons`, some once)."""
    rng = np.random.default_rng(seed)
    if singletons:
        labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5][:n])
    else:
        labels = np.concatenate([np.arange(classes)] * 2 + [rng.integers(0, classes, n - 2 * classes)])
    x = rng.normal(size=(n, d)).astype("float32")
    return labels.astype("int32"), x


def _points(n, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype("float32")


def _l1(embeddings):
    return ops.sum(ops.abs(ops.expand_dims(embeddings, 1) - ops.expand_dims(embeddings, 0)), -1)


# (our loss on (labels, x), the float64 reference on (labels, x)); x is (B, D).
CASES = {}
for _metric in METRICS:
    for _margin in (0.5, 1.0):
        CASES[f"semihard-{_metric}-{_margin}"] = (
            lambda y, x, m=_metric, g=_margin: addons.triplet_semihard_loss(
                y, x, margin=g, distance_metric=m
            ),
            lambda y, x, m=_metric, g=_margin: ref.triplet_semihard(y, x, g, m),
        )
        CASES[f"hard-{_metric}-{_margin}"] = (
            lambda y, x, m=_metric, g=_margin: addons.triplet_hard_loss(
                y, x, margin=g, distance_metric=m
            ),
            lambda y, x, m=_metric, g=_margin: ref.triplet_hard(y, x, g, False, m),
        )
    CASES[f"hard-soft-{_metric}"] = (
        lambda y, x, m=_metric: addons.triplet_hard_loss(y, x, soft=True, distance_metric=m),
        lambda y, x, m=_metric: ref.triplet_hard(y, x, 1.0, True, m),
    )
CASES["semihard-callable"] = (
    lambda y, x: addons.triplet_semihard_loss(y, x, distance_metric=_l1),
    lambda y, x: ref.triplet_semihard(y, x, 1.0, "L1"),
)
CASES["hard-callable"] = (
    lambda y, x: addons.triplet_hard_loss(y, x, distance_metric=_l1),
    lambda y, x: ref.triplet_hard(y, x, 1.0, False, "L1"),
)
for _margin in (0.5, 1.0):
    CASES[f"lifted-{_margin}"] = (
        lambda y, x, g=_margin: addons.lifted_struct_loss(y, x, margin=g),
        lambda y, x, g=_margin: ref.lifted_struct(y, x, g),
    )
# N-pairs: x holds anchors (first half of D) and positives (second half); the
# loss sees their similarity matrix.
CASES["npairs"] = (
    lambda y, x: addons.npairs_loss(y, ops.matmul(x[:, :2], ops.transpose(x[:, 2:]))),
    lambda y, x: ref.npairs(y, x[:, :2] @ x[:, 2:].T),
)
CASES["npairs-multilabel"] = (
    lambda y, x: addons.npairs_multilabel_loss(
        np.eye(4)[y % 4] + np.eye(4)[(y + 1) % 4] * (y % 2)[:, None],
        ops.matmul(x[:, :2], ops.transpose(x[:, 2:])),
    ),
    lambda y, x: ref.npairs_multilabel(
        np.eye(4)[y % 4] + np.eye(4)[(y + 1) % 4] * (y % 2)[:, None], x[:, :2] @ x[:, 2:].T
    ),
)
CASES["contrastive"] = (
    lambda y, x: ops.mean(addons.contrastive_loss(y % 2, ops.norm(x[:, :2] - x[:, 2:], axis=1))),
    lambda y, x: np.mean(ref.contrastive(y % 2, np.linalg.norm(x[:, :2] - x[:, 2:], axis=1))),
)


def _grad(fn, labels, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = fn(labels, x)
    return float(value), tape.gradient(value, x).numpy()


@pytest.mark.parametrize("singletons", [False, True], ids=["normal", "singletons"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_value_and_gradient_match_reference(case, singletons):
    ours, reference = CASES[case]
    labels, x = _batch(seed=len(case), singletons=singletons)
    value, grad = _grad(ours, labels, x)
    expected = reference(labels, x.astype(np.float64))
    np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-5)
    expected_grad = numeric_gradient(lambda e: reference(labels, e), x.astype(np.float64))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5)


def test_reference_examples_by_hand():
    """Pins the references themselves on a 1-D batch worked out by hand."""
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0], [1.0], [1.5], [3.0]])
    # (0,1): n=1.5 -> 0.5; (1,0): n=2 -> 0; (2,3): no farther, farthest 1.5 -> 1; (3,2): n=2 -> 0.5
    assert ref.triplet_semihard(labels, x) == pytest.approx(2.0 / 4)
    # hardest (pos, neg) per anchor: (1, 1.5), (1, 0.5), (1.5, 0.5), (1.5, 2)
    assert ref.triplet_hard(labels, x) == pytest.approx((0.5 + 1.5 + 2.0 + 0.5) / 4)
    expected = 0.0
    for i, j in [(0, 1), (2, 3)]:
        negatives = {0: [1.5, 3.0], 1: [0.5, 2.0], 2: [1.5, 0.5], 3: [3.0, 2.0]}
        s = sum(np.exp(1 - v) for v in negatives[i] + negatives[j])
        expected += max(np.log(s) + abs(x[i, 0] - x[j, 0]), 0) ** 2
    assert ref.lifted_struct(labels, x) == pytest.approx(expected / 4)
    assert ref.npairs([0, 1], [[2.0, 0.0], [0.0, 2.0]]) == pytest.approx(np.log1p(np.exp(-2.0)))


def test_pairwise_helpers_match_reference():
    _, x = _batch()
    for squared, metric in [(False, "L2"), (True, "squared-L2")]:
        np.testing.assert_allclose(
            addons.pairwise_distance(x, squared=squared),
            ref.distance_matrix(x, metric),
            rtol=1e-5,
            atol=2e-5,
        )
    np.testing.assert_allclose(
        addons.angular_distance(x), ref.distance_matrix(x, "angular"), atol=1e-6
    )
    assert np.all(np.diag(addons.pairwise_distance(x)) == 0.0)
    assert np.all(np.asarray(addons.angular_distance(x)) >= 1e-16)


def test_contrastive_elementwise_and_aligned():
    similar = np.array([1, 0, 0, 1])
    dist = np.array([0.5, 0.25, 2.0, 0.0], "float32")
    expected = ref.contrastive(similar, dist, 0.75)
    np.testing.assert_allclose(addons.contrastive_loss(similar, dist, 0.75), expected, atol=1e-7)
    aligned = addons.contrastive_loss(similar[:, None], dist, 0.75)
    assert tuple(aligned.shape) == (4,)
    np.testing.assert_allclose(aligned, expected, atol=1e-7)


LABEL_LOSSES = {
    "semihard": addons.triplet_semihard_loss,
    "hard": addons.triplet_hard_loss,
    "lifted": addons.lifted_struct_loss,
}


@pytest.mark.parametrize("name", ["semihard", "lifted"])
def test_no_positive_pair_gives_zero_with_zero_gradient(name):
    labels = np.arange(6, dtype="int32")
    x = _points(6)
    value, grad = _grad(LABEL_LOSSES[name], labels, x)
    assert value == 0.0
    assert np.all(grad == 0.0)


def test_hard_without_positives_keeps_addons_value():
    """Addons' batch-hard loss is finite without positives (row minimum stands in)."""
    labels = np.arange(6, dtype="int32")
    x = _points(6)
    x = 0.3 * x  # some negatives closer than the margin, so the value is not 0
    value, grad = _grad(addons.triplet_hard_loss, labels, x)
    expected = ref.triplet_hard(labels, x.astype(np.float64))
    assert expected > 0
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("metric", METRICS)
def test_one_class_batch(metric):
    labels = np.zeros(5, "int32")
    x = _points(5)
    value, grad = _grad(
        lambda y, e: addons.triplet_semihard_loss(y, e, distance_metric=metric), labels, x
    )
    np.testing.assert_allclose(
        value, ref.triplet_semihard(labels, x.astype(np.float64), 1.0, metric), rtol=1e-5
    )
    assert np.all(np.isfinite(grad))
    value, grad = _grad(addons.lifted_struct_loss, labels, x)
    assert value == 0.0 and np.all(grad == 0.0)


@pytest.mark.parametrize("name", sorted(LABEL_LOSSES))
@pytest.mark.parametrize("metric", METRICS)
def test_duplicate_embeddings_are_finite(name, metric):
    labels = np.array([0, 0, 1, 1, 2, 2], "int32")
    x = np.repeat(_points(3), 2, axis=0)  # each class is one point twice
    x[4] = x[0]  # and a negative coincides with an anchor
    kwargs = {} if name == "lifted" else {"distance_metric": metric}
    value, grad = _grad(lambda y, e: LABEL_LOSSES[name](y, e, **kwargs), labels, x)
    assert np.isfinite(value)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("case", ["semihard-L2-1.0", "hard-angular-1.0", "lifted-1.0", "npairs"])
def test_float16_inputs(case):
    ours, _ = CASES[case]
    labels, x = _batch()
    x16 = x.astype("float16")
    value16 = ours(labels, tf.constant(x16))
    assert value16.dtype == tf.float16
    value32 = ours(labels, tf.constant(x16.astype("float32")))
    np.testing.assert_allclose(float(value16), float(value32), rtol=1e-3)
    with tf.GradientTape() as tape:
        x16_t = tf.constant(x16)
        tape.watch(x16_t)
        value = ours(labels, x16_t)
    assert np.all(np.isfinite(tape.gradient(value, x16_t).numpy()))


def test_large_label_values_stay_distinct():
    labels = np.array([2**40, 2**40 + 1, 2**40, 2**40 + 1], "int64")
    x = _points(4)
    np.testing.assert_allclose(
        float(addons.TripletSemiHardLoss()(labels, x)),
        ref.triplet_semihard(labels, x.astype(np.float64)),
        rtol=1e-5,
    )


def test_angular_zero_row_is_at_distance_one_from_itself():
    # Addons normalises rows: a zero row has cosine 0 with every row, itself included.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], "float32")
    labels = np.array([0, 1, 2])
    np.testing.assert_allclose(
        addons.angular_distance(x), ref.distance_matrix(x, "angular"), atol=1e-6
    )
    assert float(addons.angular_distance(x)[0, 0]) == pytest.approx(1.0)
    # Anchors without positives fall back to the row minimum: 1 for the zero row.
    for loss, reference in [
        (addons.triplet_hard_loss, ref.triplet_hard),
        (addons.triplet_semihard_loss, ref.triplet_semihard),
    ]:
        assert float(loss(labels, x, distance_metric="angular")) == pytest.approx(
            reference(labels, x, metric="angular"), abs=1e-6
        )
    assert ref.triplet_hard(labels, x, metric="angular") == pytest.approx(1 / 3)
