"""tfmetric's code is traced as written inside a user's `tf.function`: AutoGraph converts none of it.

AutoGraph rewrites the source of every function it meets inside a
`tf.function` unless told not to; for a `TripletLoss` that was ~80 functions,
6-9 s of CPU on the first trace (`tfmetric._src.autograph`). These tests record
what AutoGraph converts (its converter, wrapped by a fixture) while the public
entry points run inside `tf.function`s, and check that a user's own callables
still get AutoGraph where tfmetric calls them from `tf.data` map functions.
"""

import numpy as np
import pytest

pytestmark = pytest.mark.tf_only

tf = pytest.importorskip("tensorflow")

import tfmetric  # noqa: E402


@pytest.fixture
def converted(monkeypatch):
    """The qualified names of the functions AutoGraph converts during the test."""
    from tensorflow.python.autograph.impl import api  # the converter: test-only access

    names = []
    convert = api._convert_actual

    def recording(entity, program_ctx):
        # A callable object's `__call__` marked `as_written` is converted as its two-line
        # wrapper (AutoGraph looks for the mark on the object), which runs it as written.
        if not hasattr(entity, "autograph_info__"):
            name = f"{getattr(entity, '__module__', '')}.{getattr(entity, '__qualname__', '')}"
            names.append(name)
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", recording)
    return names


def _ours(names):
    return [n for n in names if n.startswith("tfmetric.")]


LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1], np.int32)
EMBEDDINGS = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)


def _loss_cases():
    losses = tfmetric.losses
    triplets = EMBEDDINGS.reshape(8, 1, 4)[:6].reshape(2, 3, 4)
    pairs = np.abs(EMBEDDINGS[:, 0])
    return [
        (losses.TripletLoss(), LABELS, EMBEDDINGS),
        (losses.TripletLoss(mining="hard", distance="cosine"), LABELS, EMBEDDINGS),
        (losses.TripletLoss(mining="all"), LABELS, EMBEDDINGS),
        (losses.AnchorTripletLoss(), LABELS, EMBEDDINGS),
        (losses.PNLoss(), LABELS, EMBEDDINGS),
        (losses.ContrastiveLoss(), LABELS, EMBEDDINGS),
        (losses.MultiSimilarityLoss(), LABELS, EMBEDDINGS),
        (losses.CircleLoss(), LABELS, EMBEDDINGS),
        (losses.LiftedStructureLoss(), LABELS, EMBEDDINGS),
        (losses.NPairsLoss(), LABELS, EMBEDDINGS),
        (losses.SupervisedContrastiveLoss(), LABELS, EMBEDDINGS),
        (losses.NTXentLoss(), LABELS, EMBEDDINGS),
        (losses.SoftNearestNeighborLoss(), LABELS, EMBEDDINGS),
        (losses.InBatchSoftmaxLoss(), np.arange(8), EMBEDDINGS @ EMBEDDINGS.T),
        (losses.PairContrastiveLoss(), (LABELS % 2).astype(np.float32), pairs),
        (losses.TripletMarginLoss(), None, triplets),
        (tfmetric.addons.losses.TripletSemiHardLoss(), LABELS, EMBEDDINGS),
        (tfmetric.addons.losses.TripletHardLoss(), LABELS, EMBEDDINGS),
        (tfmetric.addons.losses.LiftedStructLoss(), LABELS, EMBEDDINGS),
    ]


@pytest.mark.parametrize(
    "loss, labels, predictions", _loss_cases(), ids=lambda c: getattr(c, "name", None)
)
def test_losses_in_a_user_tf_function_are_traced_as_written(converted, loss, labels, predictions):
    @tf.function
    def step(y, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            value = loss(y, p)
        return value, tape.gradient(value, p)

    value, gradient = step(labels, tf.constant(predictions))
    eager = loss(labels, predictions)
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient.numpy()))
    np.testing.assert_allclose(float(value), float(eager), rtol=1e-5, atol=1e-6)
    assert _ours(converted) == []


def test_functional_losses_and_distances_are_traced_as_written(converted):
    losses = tfmetric.losses
    distances = [tfmetric.distances.get(n) for n in
                 ("euclidean", "squared_euclidean", "cosine", "inner_product", "manhattan")]  # fmt: skip

    @tf.function
    def step(y, e):
        values = [
            losses.triplet_loss(y, e), losses.contrastive_loss(y, e), losses.circle_loss(y, e),
            losses.multi_similarity_loss(y, e), losses.lifted_structure_loss(y, e),
            losses.npairs_loss(y, e), losses.supervised_contrastive_loss(y, e),
            losses.nt_xent_loss(y, e), losses.soft_nearest_neighbor_loss(y, e),
            losses.anchor_triplet_loss(y, e), losses.pn_loss(y, e),
            losses.clip_loss(e, e), losses.paired_distance("euclidean", e, e),
        ]  # fmt: skip
        for distance in distances:
            values += [distance(e), distance.pairwise(e, e), distance.paired(e, e),
                       distance.closeness(e), distance.rowwise(e, e)]  # fmt: skip
        return [tf.reduce_sum(v) for v in values]

    results = step(tf.constant(LABELS), tf.constant(EMBEDDINGS))
    assert all(np.isfinite(r.numpy()) for r in results)
    assert _ours(converted) == []


def test_heads_and_learned_distances_are_traced_as_written(converted):
    head = tfmetric.layers.ArcFace(num_classes=3)
    weighted = tfmetric.layers.WeightedL1()
    weighted.build((None, 4))

    @tf.function
    def step(e, y):
        return head(e, y), weighted.pairwise(e, e)

    values, pairwise = step(tf.constant(EMBEDDINGS), tf.constant(LABELS))
    assert values.shape == (8,) and pairwise.shape == (8, 8)
    assert _ours(converted) == []


def test_samplers_draw_as_written_and_user_augmentations_keep_autograph(converted):
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.repeat(np.arange(5), 4)

    def augment(batch):
        # Python control flow on a tensor: needs AutoGraph, as a tf.data map function has.
        if tf.reduce_sum(batch) > 0:
            batch = batch + 1.0
        return batch

    dataset = tfmetric.data.class_balanced_dataset(
        x, y, classes_per_batch=2, samples_per_class=2, seed=0, augment=augment
    )
    batch_x, batch_y = next(iter(dataset))
    assert batch_x.shape == (4, 2)
    rows = batch_x.numpy() - 1.0  # augmented: every row is a row of x, plus one
    assert all(any(np.array_equal(r, s) for s in x) for r in rows)
    assert np.array_equal(y[(rows[:, 0] // 2).astype(int)], batch_y.numpy())
    assert any(n.endswith(".augment") for n in converted)
    # Only the map function that calls the user's augmentation (and the helper between).
    assert not [n for n in _ours(converted) if "ClassIndex" in n or ".draw" in n]


def test_saved_model_signatures_are_traced_as_written(converted, tmp_path):
    import keras

    embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    gallery = {"embeddings": EMBEDDINGS[:, :3], "ids": np.arange(8).astype(str)}
    tfmetric.export.save_embedder(tmp_path / "model", embedder, gallery=gallery, top_k=2)
    assert _ours(converted) == []
