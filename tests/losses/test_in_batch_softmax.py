"""In-batch softmax / CLIP InfoNCE against numpy references of the papers' definitions."""

import backend_ops
import keras
import numpy as np
import pytest

import tfmetric


def _softmax_ce(scores, allowed):
    """-log softmax of the diagonal over the allowed entries of each row, float64."""
    out = []
    for i in range(scores.shape[0]):
        row = scores[i][allowed[i]]
        out.append(np.log(np.sum(np.exp(row - row.max()))) + row.max() - scores[i, i])
    return np.array(out)


def reference(logits, ids=None, log_q=None, symmetric=False):
    logits = np.asarray(logits, np.float64)
    b = logits.shape[0]
    allowed = np.ones((b, b), bool)
    if ids is not None:
        for i in range(b):
            for j in range(b):
                if j != i and ids[j] == ids[i]:
                    allowed[i, j] = False  # accidental hit: the same candidate again
    rows = logits if log_q is None else logits - np.asarray(log_q)[None, :]
    values = _softmax_ce(rows, allowed)
    if symmetric:
        values = (values + _softmax_ce(logits.T, allowed.T)) / 2
    return values


RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 6)) * 3
IDS = np.array([5, 9, 5, 2, 9, 7])
LOG_Q = np.log(RNG.uniform(0.01, 0.5, size=6))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("ids", [None, IDS])
@pytest.mark.parametrize("log_q", [None, LOG_Q])
def test_in_batch_softmax_matches_reference(symmetric, ids, log_q):
    values = tfmetric.losses.in_batch_softmax_loss(
        LOGITS, candidate_ids=ids, candidate_log_probability=log_q, symmetric=symmetric
    )
    np.testing.assert_allclose(values, reference(LOGITS, ids, log_q, symmetric), rtol=1e-5)


def test_logq_correction_lowers_popular_negatives():
    # A candidate sampled often (large Q) is down-weighted as a negative.
    logits = np.zeros((3, 3))
    plain = np.asarray(tfmetric.losses.in_batch_softmax_loss(logits))
    log_q = np.log([0.9, 0.05, 0.05])
    corrected = np.asarray(tfmetric.losses.in_batch_softmax_loss(logits, None, log_q))
    assert corrected[1] < plain[1] and corrected[0] > plain[0]


def test_clip_loss_is_symmetric_infonce_on_cosine():
    q, c = RNG.normal(size=(5, 4)), RNG.normal(size=(5, 4))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    logits = qn @ cn.T / 0.1
    image_to_text = np.array([-np.log(np.exp(r[i]) / np.exp(r).sum()) for i, r in enumerate(logits)])
    text_to_image = np.array(
        [-np.log(np.exp(r[i]) / np.exp(r).sum()) for i, r in enumerate(logits.T)]
    )
    values = tfmetric.losses.clip_loss(q, c, temperature=0.1)
    np.testing.assert_allclose(values, (image_to_text + text_to_image) / 2, rtol=1e-5)


def test_all_duplicates_give_zero_and_finite_gradients():
    logits = RNG.normal(size=(4, 4)).astype("float32")
    values = tfmetric.losses.in_batch_softmax_loss(
        logits, candidate_ids=np.zeros(4, "int64"), symmetric=True
    )
    np.testing.assert_allclose(values, 0.0, atol=1e-6)
    grad = backend_ops.grad(
        lambda z: keras.ops.sum(
            tfmetric.losses.in_batch_softmax_loss(
                z, candidate_ids=np.zeros(4, "int64"), symmetric=True
            )
        ),
        logits,
    )
    assert np.all(np.isfinite(grad))


def test_loss_class_uses_ids_exactly_and_round_trips():
    big_ids = np.array([2**40 + 1, 2**40 + 2, 2**40 + 1, 7])  # equal after a float32 cast
    loss = tfmetric.losses.InBatchSoftmaxLoss(symmetric=True, remove_accidental_hits=True)
    expected = reference(LOGITS[:4, :4], ids=[0, 1, 0, 3], symmetric=True).mean()
    np.testing.assert_allclose(float(loss(big_ids, LOGITS[:4, :4])), expected, rtol=1e-5)
    config = loss.get_config()
    assert config["symmetric"] and config["remove_accidental_hits"]
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    np.testing.assert_allclose(float(again(big_ids, LOGITS[:4, :4])), expected, rtol=1e-5)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.losses.clip_loss(np.ones((2, 3)), np.ones((2, 3)), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        tfmetric.losses.clip_loss(np.ones((2, 3)), np.ones((2, 3)), temperature=-1.0)
    with pytest.raises(ValueError, match="candidate_embeddings"):
        tfmetric.losses.clip_loss(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="square"):
        tfmetric.losses.in_batch_softmax_loss(np.ones((2, 3)))
    with pytest.raises(ValueError, match="candidate_ids"):
        tfmetric.losses.in_batch_softmax_loss(np.ones((2, 2)), candidate_ids=np.ones(3, "int64"))
    with pytest.raises(ValueError, match="candidate_ids"):
        tfmetric.losses.in_batch_softmax_loss(np.ones((2, 2)), candidate_ids=np.ones(2))
    with pytest.raises(TypeError, match="symmetric"):
        tfmetric.losses.InBatchSoftmaxLoss(symmetric="yes")


def _clip_reference(q, c, temperature):
    """CLIP's symmetric InfoNCE in float64 from unit vectors (scale-free by definition)."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    logits = qn @ cn.T / temperature
    return reference(logits, symmetric=True)


@pytest.mark.parametrize("scale", [1e-30, 1e-7, 1.0, 1e20, 1e30])
def test_clip_loss_is_scale_free_from_1e_minus_30_to_1e30(scale):
    # The epsilon-guarded norm kept vectors of norm < 1e-6 unnormalised and overflowed past 1e19.
    q, c = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    expected = _clip_reference(q, c, 0.5)
    scaled_q, scaled_c = (q * scale).astype("float32"), (c * scale).astype("float32")
    values = tfmetric.losses.clip_loss(scaled_q, scaled_c, 0.5)
    np.testing.assert_allclose(values, expected, rtol=1e-4)


def test_clip_loss_checks_its_embeddings():
    q = RNG.normal(size=(4, 3)).astype("float32")
    nan = np.where(np.arange(12).reshape(4, 3) == 4, np.nan, q).astype("float32")
    cases = [
        (lambda: tfmetric.losses.clip_loss(nan, q), "query_embeddings"),
        (lambda: tfmetric.losses.clip_loss(q, np.where(nan == nan, q, np.inf)), "candidate_emb"),
        (lambda: tfmetric.losses.clip_loss(q[:, :0], q[:, :0]), "query_embeddings"),
        (lambda: tfmetric.losses.clip_loss(q, q[:, :2]), "embedding size"),
        (lambda: tfmetric.losses.clip_loss(q[0], q), "query_embeddings"),
        (lambda: tfmetric.losses.clip_loss(q[:0], q[:0]), "empty"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_in_batch_softmax_rejects_nan_and_inf_values():
    q = RNG.normal(size=(4, 3)).astype("float32")
    with pytest.raises(ValueError, match="`logits` contains NaN"):
        tfmetric.losses.in_batch_softmax_loss(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match="`logits` contains NaN"):
        tfmetric.losses.in_batch_softmax_loss(np.array([[np.inf, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="candidate_log_probability"):
        tfmetric.losses.in_batch_softmax_loss(
            np.ones((2, 2)), candidate_log_probability=np.array([0.0, -np.inf])
        )
    # Strings are refused before any backend converts them (JAX cannot hold them).
    with pytest.raises(ValueError, match="candidate_log_probability"):
        tfmetric.losses.in_batch_softmax_loss(
            np.ones((2, 2)), candidate_log_probability=np.array(["a", "b"])
        )
    with pytest.raises(ValueError, match="query_embeddings"):
        tfmetric.losses.clip_loss(q.astype(str), q)
    with pytest.raises(ValueError, match="`logits` contains NaN"):
        tfmetric.losses.InBatchSoftmaxLoss()(np.arange(2), np.full((2, 2), np.nan))
