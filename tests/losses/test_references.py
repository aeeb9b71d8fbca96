"""In-batch losses with references (a cross-batch memory): the batch's anchors against batch + memory.

The numpy references are written from the papers' definitions with the XBM
reading of Wang et al. 2020: the anchors are the batch's samples, the other
side of every pair is any other sample of the batch or any written memory
slot.
"""

import backend_ops
import keras
import numpy as np
import pytest
import tensorflow as tf
from graph_memory import largest_tensor_elements
from references import pairwise

import tfmetric
from tfmetric.losses.batch import InBatchLoss
from tfmetric.losses.triplet import MINING_MODES

B, M, D = 6, 9, 3


def _data(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.array([0, 1, 2, 0, 1, 3])
    x = (0.6 * rng.normal(size=(B, D))).astype("float32")
    ref_labels = np.array([0, 2, 4, 1, 0, 3, 2, 0, 1])
    refs = (0.6 * rng.normal(size=(M, D))).astype("float32")
    valid = np.array([True, True, True, True, True, True, False, False, True])
    return labels, x, ref_labels, refs, valid


def _pairs(labels, x, ref_labels, refs, valid, distance):
    """Per anchor (batch row): the (label, distance) of every other batch sample and written slot."""
    columns = np.concatenate([x, refs[valid]])
    column_labels = np.concatenate([labels, ref_labels[valid]])
    d = pairwise(x, columns, distance)
    out = []
    for i in range(len(labels)):
        others = [j for j in range(len(column_labels)) if j != i]
        out.append([(column_labels[j] == labels[i], d[i, j]) for j in others])
    return out


def np_contrastive(data, margin=1.0):
    costs = []
    for pairs in _pairs(*data, "euclidean"):
        costs.append(np.mean([d**2 if same else max(margin - d, 0.0) ** 2 for same, d in pairs]))
    return np.array(costs)


def np_triplet(data, mining, margin=0.3):
    """FaceNet / Hermans et al. triplets of the batch's anchors; the loss (documented mean)."""
    terms = []
    for pairs in _pairs(*data, "euclidean"):
        pos = [d for same, d in pairs if same]
        neg = [d for same, d in pairs if not same]
        if not neg or not pos:
            continue
        if mining == "hard":
            terms.append(max(max(pos) - min(neg) + margin, 0.0))
        elif mining == "easy":
            terms.append(max(min(pos) - max(neg) + margin, 0.0))
        elif mining == "semi-hard":
            for p in pos:
                farther = [n for n in neg if n > p]
                n = min(farther) if farther else max(neg)
                terms.append(max(p - n + margin, 0.0))
        else:
            terms.extend(max(p - n + margin, 0.0) for p in pos for n in neg)
    if mining == "all":
        nonzero = [t for t in terms if t > 0]
        return np.sum(nonzero) / max(len(nonzero), 1)
    return np.mean(terms)


def np_multi_similarity(data, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1):
    values = []
    for pairs in _pairs(*data, "cosine"):
        pos = np.array([1 - d for same, d in pairs if same])
        neg = np.array([1 - d for same, d in pairs if not same])
        kept_pos = pos[pos < neg.max() + epsilon] if len(neg) else pos[:0]
        kept_neg = neg[neg > pos.min() - epsilon] if len(pos) else neg[:0]
        values.append(
            np.log1p(np.sum(np.exp(-alpha * (kept_pos - base)))) / alpha
            + np.log1p(np.sum(np.exp(beta * (kept_neg - base)))) / beta
        )
    return np.array(values)


def _loss_value(loss, data):
    labels, x, ref_labels, refs, valid = data
    values, counts = loss.reference_terms(labels, x, ref_labels, refs, valid)
    assert values.shape == (B,) and counts.shape == (B,)
    values, counts = keras.ops.convert_to_numpy(values), keras.ops.convert_to_numpy(counts)
    return float(np.sum(values) / np.sum(counts)), values, counts


def test_contrastive_with_references_matches_the_definition():
    data = _data()
    _, values, counts = _loss_value(tfmetric.losses.ContrastiveLoss(margin=1.0), data)
    np.testing.assert_allclose(values / counts, np_contrastive(data), rtol=1e-5)
    # B - 1 batch pairs and the 7 written slots.
    np.testing.assert_array_equal(counts, np.full(B, B - 1 + 7))


@pytest.mark.parametrize("mining", ["semi-hard", "hard", "easy", "all"])
def test_triplet_with_references_matches_the_definition(mining):
    data = _data(1)
    value, _, _ = _loss_value(tfmetric.losses.TripletLoss(margin=0.3, mining=mining), data)
    np.testing.assert_allclose(value, np_triplet(data, mining), rtol=1e-5)


def test_multi_similarity_with_references_matches_the_definition():
    data = _data(2)
    _, values, counts = _loss_value(tfmetric.losses.MultiSimilarityLoss(), data)
    np.testing.assert_array_equal(counts, np.ones(B))
    np.testing.assert_allclose(values, np_multi_similarity(data), rtol=1e-4, atol=1e-6)


def test_invalid_slots_are_ignored_whatever_they_hold():
    labels, x, ref_labels, refs, valid = _data(3)
    loss = tfmetric.losses.MultiSimilarityLoss()
    a = loss.reference_terms(labels, x, ref_labels, refs, valid)
    scrambled_labels, scrambled = ref_labels.copy(), refs.copy()
    scrambled_labels[~valid] = labels[0]
    scrambled[~valid] = x[0] * 5.0
    b = loss.reference_terms(labels, x, scrambled_labels, scrambled, valid)
    for one, two in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(one), np.asarray(two))


def _reference_losses():
    """Every in-batch loss that takes references, in several configurations."""
    for name in tfmetric.losses.__all__:
        cls = getattr(tfmetric.losses, name)
        if not (isinstance(cls, type) and issubclass(cls, InBatchLoss)):
            continue
        if cls.references_unsupported is not None:
            continue
        if cls is tfmetric.losses.TripletLoss:
            for mining in MINING_MODES:
                yield f"TripletLoss-{mining}", lambda m=mining, c=cls: c(mining=m)
            yield "TripletLoss-all-soft", lambda c=cls: c(mining="all", soft_margin=True)
        elif cls is tfmetric.losses.PNLoss:
            yield "PNLoss", cls
            yield "PNLoss-euclidean-hard", lambda c=cls: c(
                distance="euclidean", negative_mining="hard"
            )
        else:
            yield name, cls


REFERENCE_LOSSES = list(_reference_losses())


@pytest.mark.parametrize("make", [m for _, m in REFERENCE_LOSSES], ids=[n for n, _ in REFERENCE_LOSSES])
def test_rows_are_the_batch_rows_of_the_loss_over_batch_and_written_slots(make):
    # XBM's definition: the loss of [batch; memory] restricted to the batch's anchors, with
    # unwritten slots removed. The in-batch cores are checked against the papers elsewhere.
    labels, x, ref_labels, refs, valid = _data(4)
    loss = make()
    values, counts = loss.reference_terms(labels, x, ref_labels, refs, valid)
    all_labels = np.concatenate([labels, ref_labels[valid]])
    all_x = np.concatenate([x, refs[valid]])
    expected_values, expected_counts = loss._terms(*loss_inputs(all_labels, all_x))
    np.testing.assert_allclose(values, np.asarray(expected_values)[:B], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(counts, np.asarray(expected_counts)[:B], rtol=1e-6)


def loss_inputs(labels, x):
    return keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(x)


@pytest.mark.tf_only  # the loss bound to a tf.Variable (MiningSchedule's TensorFlow path)
def test_scheduled_triplet_mining_with_references_follows_the_variable():
    data = _data(5)
    labels, x, ref_labels, refs, valid = data
    loss = tfmetric.losses.TripletLoss(margin=0.3)
    mode = tf.Variable(0, dtype=tf.int32)
    loss.use_variables(mining=mode, modes=MINING_MODES)

    @tf.function  # XLA with a schedule: tests/models/test_cross_batch_memory.py
    def value(embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            v, c = loss.reference_terms(labels, embeddings, ref_labels, refs, valid)
            total = tf.reduce_sum(v) / tf.reduce_sum(c)
        return total, tape.gradient(total, embeddings)

    for code, mining in enumerate(MINING_MODES):
        mode.assign(code)
        total, gradient = value(tf.constant(x))
        np.testing.assert_allclose(float(total), np_triplet(data, mining), rtol=1e-5)
        assert np.all(np.isfinite(gradient))
    assert value.experimental_get_tracing_count() == 1


def test_gradients_reach_the_batch_only_and_are_finite():
    labels, x, ref_labels, refs, valid = _data(6)
    for name, make in REFERENCE_LOSSES:
        loss = make()

        def mean_term(e, r, loss=loss):
            v, c = loss.reference_terms(labels, e, ref_labels, r, valid)
            return keras.ops.sum(v) / keras.ops.sum(c)

        total, (gx, gr) = backend_ops.value_and_grad(
            mean_term, x, refs, argnums=(0, 1), unconnected="zero"
        )
        assert np.all(np.isfinite(gx)), name
        assert float(total) == 0.0 or np.any(np.asarray(gx) != 0), name
        # References are constants only if the caller stops their gradient; the values are finite.
        assert gr is None or np.all(np.isfinite(gr)), name


@pytest.mark.tf_only  # inspects the TensorFlow graph
@pytest.mark.parametrize("make", [m for _, m in REFERENCE_LOSSES], ids=[n for n, _ in REFERENCE_LOSSES])
def test_memory_is_batch_times_references_forward_and_backward(make):
    batch, memory, dim = 7, 61, 5
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, dim)).astype("float32"))
    labels = tf.constant(np.arange(batch) % 3)
    refs = tf.constant(rng.normal(size=(memory, dim)).astype("float32"))
    ref_labels = tf.constant(np.arange(memory) % 4)
    valid = tf.constant(np.arange(memory) < 50)
    loss = make()

    def step(embeddings, y, r, ry, ok):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            v, c = loss.reference_terms(y, embeddings, ry, tf.stop_gradient(r), ok)
            value = tf.reduce_sum(v) / tf.reduce_sum(c)
        return value, tape.gradient(value, embeddings)

    largest = largest_tensor_elements(step, x, labels, refs, ref_labels, valid)
    # (B, B + M) matrices (476 entries) and the (B + M, D) columns; never (B + M)² = 4624.
    assert largest <= max(batch * (batch + memory), (batch + memory) * dim)


def test_npairs_refuses_references_and_says_why():
    labels, x, ref_labels, refs, valid = _data()
    with pytest.raises(ValueError, match="NPairsLoss cannot use references.*N pairs"):
        tfmetric.losses.NPairsLoss().reference_terms(labels, x, ref_labels, refs, valid)


def test_bad_references_are_named():
    labels, x, ref_labels, refs, valid = _data()
    loss = tfmetric.losses.ContrastiveLoss()
    with pytest.raises(ValueError, match="ref_embeddings"):
        loss._terms(tf.constant(labels), tf.constant(x), ref_labels=ref_labels)
    with pytest.raises(ValueError, match="ref_labels"):
        loss.reference_terms(labels, x, None, refs)
    with pytest.raises(ValueError, match="ref_embeddings.*dimension 3"):
        loss.reference_terms(labels, x, ref_labels, np.zeros((M, 4), "float32"))
    with pytest.raises(ValueError, match="ref_labels"):
        loss.reference_terms(labels, x, ref_labels[:4], refs)
    with pytest.raises(ValueError, match="ref_valid"):
        loss.reference_terms(labels, x, ref_labels, refs, valid[:3])
    with pytest.raises(ValueError, match="ref_valid.*boolean"):
        loss.reference_terms(labels, x, ref_labels, refs, valid.astype("int32"))
