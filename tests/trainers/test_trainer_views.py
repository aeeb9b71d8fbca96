"""`--views`: self-supervised training of the main job on augmented views, without labels."""

import numpy as np
import pytest

import trainers
from trainers import pipeline


def test_views_setting_is_checked():
    assert trainers.RunConfig().views == 0
    assert trainers.RunConfig(loss="ntxent", views=2).identity()["views"] == 2
    with pytest.raises(ValueError, match="--views"):
        trainers.RunConfig(loss="ntxent", views=1)
    with pytest.raises(ValueError, match="--views.*model_kind=proxy"):
        trainers.RunConfig(loss="arc_face", views=2)
    with pytest.raises(ValueError, match="--views.*model_kind=siamese"):
        trainers.RunConfig(model_kind="siamese", views=2)
    with pytest.raises(ValueError, match="--views=4"):
        pipeline.views_batch_size(2, 2, 4, num_samples=100)
    assert pipeline.views_batch_size(4, 4, 2, num_samples=100) == 8


def test_view_batches_are_labelled_by_sample_not_by_class():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 8, 8, 1)).astype(np.uint8)
    xb, ids = next(iter(pipeline.view_dataset(x, batch_size=5, views=2, seed=0)))
    assert xb.shape == (10, 8, 8, 1) and xb.dtype == np.float32
    ids = ids.numpy()
    np.testing.assert_array_equal(ids[:5], ids[5:])
    assert len(set(ids[:5].tolist())) == 5 and ids.max() < 12
    # The views are augmented copies of the samples they are labelled with (same value range).
    assert not np.allclose(xb[:5], xb[5:])
    assert abs(float(np.mean(xb[:5])) - float(np.mean(x[ids[:5]]))) < 40
    vectors = rng.normal(size=(12, 3)).astype(np.float32)
    vb, vid = next(iter(pipeline.view_dataset(vectors, batch_size=4, views=3, seed=0)))
    assert vb.shape == (12, 3)
    np.testing.assert_allclose(vb[:4], vectors[vid[:4].numpy()], atol=1.0)


@pytest.mark.slow
def test_ntxent_with_two_views_trains_the_main_job(tmp_path):
    config = trainers.RunConfig(
        loss="ntxent", views=2, backbone="mlp", embedding_dim=8, classes_per_batch=4,
        samples_per_class=4, epochs=1, steps_per_epoch=3, export=False,
        model_dir=str(tmp_path / "run"),
    )  # fmt: skip
    report = trainers.run(config)
    assert report["batch"]["views"] == 2
    assert report["loss"]["class"] == "NTXentLoss"
    assert report["optimizer_steps"] == 3
    assert np.isfinite(report["final_loss"])
    assert 0.0 <= report["held_out"]["model"]["map_at_r"] <= 1.0
