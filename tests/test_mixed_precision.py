"""Mixed precision: every loss and head stays finite (values and gradients) in float16/bfloat16.

Embeddings arrive in the policy's compute dtype; losses and heads compute
distances and logits in float32. The adversarial suite holds the cases where
low precision breaks naive code: duplicate and collapsed embeddings, batches
without positives, huge (1e4) and tiny (1e-4) norms, and scale-64 logits.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfmetric

POLICIES = ["mixed_float16", "mixed_bfloat16"]


def make_losses():
    losses = tfmetric.losses
    return [
        losses.TripletLoss(margin=0.2),
        losses.TripletLoss(mining="hard", soft_margin=True),
        losses.TripletLoss(mining="all"),
        losses.ContrastiveLoss(),
        losses.MultiSimilarityLoss(),
        losses.CircleLoss(),
        losses.SupervisedContrastiveLoss(),
        losses.NTXentLoss(),
        losses.LiftedStructureLoss(),
        losses.NPairsLoss(),
        losses.SoftNearestNeighborLoss(),
        losses.SupervisedContrastiveLoss(distance="euclidean", temperature=0.05),
    ]


def make_heads():
    layers = tfmetric.layers
    return [
        layers.ArcFace(4, scale=64.0),
        layers.ArcFace(4, scale=64.0, easy_margin=True),
        layers.SubCenterArcFace(4, scale=64.0),
        layers.CosFace(4, scale=64.0),
        layers.NormalizedSoftmax(4, temperature=1 / 64),
        layers.ProxyAnchor(4, alpha=64.0),
        layers.ProxyNCA(4, scale=64.0),
    ]


def adversarial_batches():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 6)).astype("float32")
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    return {
        "regular": (labels, base),
        "duplicates": (labels, np.repeat(base[:4], 2, axis=0)),
        "collapsed": (labels, np.zeros_like(base)),
        "identical": (labels, np.tile(base[:1], (8, 1))),
        "no_positives": (np.arange(8) % 4 + 4 * (np.arange(8) >= 4), base),
        "single_class": (np.zeros(8, "int64"), base),
        "huge_norm": (labels, 1e4 * unit),
        "tiny_norm": (labels, 1e-4 * unit),
        "mixed_norms": (labels, unit * np.array([1e4, 1e-4] * 4, "float32")[:, None]),
    }


BATCHES = adversarial_batches()


@pytest.fixture(params=POLICIES)
def policy(request):
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(previous)


def _low_precision(values, policy):
    return tf.cast(tf.constant(values, "float32"), policy.compute_dtype)


FLOAT16_MAX = 65504.0


def _assert_finite(name, value, gradients, float32_gradients, policy):
    """Finite value and gradients; in float16 only where the exact gradient fits.

    An exact gradient beyond float16's range (e.g. `gamma / |x|` for norms of
    1e-4) overflows whatever the code does; dynamic loss scaling then skips
    the step (`test_loss_scaled_float16_steps_keep_weights_finite`).
    """
    assert np.isfinite(float(value)), f"{name}: loss {value}"
    for gradient, reference in zip(gradients, float32_gradients, strict=True):
        reference = tf.convert_to_tensor(reference).numpy()
        assert np.all(np.isfinite(reference)), f"{name}: float32 gradient"
        gradient = tf.cast(tf.convert_to_tensor(gradient), "float32").numpy()
        fits = np.max(np.abs(reference)) < FLOAT16_MAX / 2
        if policy.name == "mixed_bfloat16" or fits:
            assert np.all(np.isfinite(gradient)), f"{name}: gradient"


def _float32_gradients(fn, values, variables=()):
    embeddings = tf.constant(values, "float32")
    with tf.GradientTape() as tape:
        tape.watch(embeddings)
        value = fn(embeddings)
    return tape.gradient(value, [embeddings, *variables])


@pytest.mark.parametrize("case", list(BATCHES))
def test_losses_finite_on_adversarial_batches(policy, case):
    labels, values = BATCHES[case]
    for loss in make_losses():
        embeddings = _low_precision(values, policy)
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            value = loss(labels, embeddings)
        gradient = tape.gradient(value, embeddings)
        assert value.dtype == tf.float32
        assert gradient.dtype == embeddings.dtype
        reference = _float32_gradients(lambda e, loss=loss: loss(labels, e), values)
        _assert_finite(f"{loss.name}/{case}", value, [gradient], reference, policy)


@pytest.mark.parametrize("case", list(BATCHES))
def test_heads_finite_on_adversarial_batches(policy, case):
    labels, values = BATCHES[case]
    labels = labels % 4
    for head in make_heads():
        embeddings = _low_precision(values, policy)
        head(embeddings, labels)
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            per_sample = head(embeddings, labels)
            value = tf.reduce_mean(tf.cast(per_sample, "float32"))
        gradients = tape.gradient(value, [embeddings, *head.trainable_variables])
        reference = _float32_gradients(
            lambda e, head=head: tf.reduce_mean(tf.cast(head(e, labels), "float32")),
            values,
            head.trainable_variables,
        )
        _assert_finite(f"{head.name}/{case}", value, gradients, reference, policy)


@pytest.mark.parametrize("case", ["regular", "huge_norm", "tiny_norm", "collapsed"])
def test_loss_scaled_float16_steps_keep_weights_finite(case):
    """Dynamic loss scaling skips overflowing steps; the weights never see Inf/NaN."""
    labels, values = BATCHES[case]
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for loss in [*make_losses(), *make_heads()]:
            layer = keras.layers.Dense(6, kernel_initializer="identity")
            layer.build((None, 6))
            weights = list(layer.trainable_variables)
            if isinstance(loss, keras.layers.Layer):
                loss.build((None, 6))
                weights += loss.trainable_variables
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.01))
            optimizer.build(weights)
            for _ in range(2):
                with tf.GradientTape() as tape:
                    embeddings = layer(tf.constant(values))
                    if isinstance(loss, keras.layers.Layer):
                        value = tf.reduce_mean(tf.cast(loss(embeddings, labels % 4), "float32"))
                    else:
                        value = loss(labels, embeddings)
                    scaled = optimizer.scale_loss(value)
                optimizer.apply(tape.gradient(scaled, weights), weights)
                assert np.isfinite(float(value)), f"{loss.name}/{case}"
            for weight in weights:
                assert np.all(np.isfinite(np.asarray(weight, "float32"))), f"{loss.name}/{case}"
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _digits_map_at_r(policy_name):
    from sklearn.datasets import load_digits

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name)
    try:
        keras.utils.set_random_seed(0)
        digits = load_digits()
        x = (digits.data / 16.0).astype("float32")
        y = digits.target.astype("int64")
        train, test = np.arange(len(x)) % 4 != 0, np.arange(len(x)) % 4 == 0
        model = keras.Sequential(
            [
                keras.Input((64,)),
                keras.layers.Dense(64, activation="relu"),
                keras.layers.Dense(32),
                keras.layers.Activation("linear", dtype="float32"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=tfmetric.losses.MultiSimilarityLoss(),
            jit_compile=True,
        )
        dataset = tfmetric.data.class_balanced_dataset(
            x[train], y[train], classes_per_batch=10, samples_per_class=4, seed=0
        )
        model.fit(dataset, steps_per_epoch=150, epochs=1, verbose=0)
        embeddings = model.predict(x[test], verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.all(np.isfinite(embeddings))
    return tfmetric.metrics.map_at_r(embeddings, y[test])


@pytest.mark.slow
def test_digits_recipe_reaches_float32_quality_in_each_policy():
    reference = _digits_map_at_r("float32")
    assert reference > 0.5
    for policy_name in POLICIES:
        value = _digits_map_at_r(policy_name)
        assert abs(value - reference) <= 0.01, (policy_name, value, reference)
