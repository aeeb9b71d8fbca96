"""Each model kind of the main job end to end: train, resume, evaluate, plots, TensorBoard, export."""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest

import trainers
from trainers import console, outputs

TINY = {
    "backbone": "mlp", "embedding_dim": 8, "classes_per_batch": 4, "samples_per_class": 4,
    "epochs": 2, "steps_per_epoch": 2, "tflite_variants": "", "jit_compile": False,
}  # fmt: skip


class _Interrupted(Exception):
    pass


def _interrupt_after_first_epoch(monkeypatch):
    """Makes the next run stop after its first epoch's checkpoint, as a killed run would."""
    real = console.training_progress

    def progress(*args, **kwargs):
        callback = real(*args, **kwargs)
        callback.on_epoch_end = lambda epoch, logs=None: (_ for _ in ()).throw(_Interrupted())
        return callback

    monkeypatch.setattr(console, "training_progress", progress)


def _run_interrupted_then_resumed(tmp_path, monkeypatch, **settings):
    config = trainers.RunConfig(**TINY, **settings, model_dir=str(tmp_path / "run"))
    with monkeypatch.context() as patch:
        _interrupt_after_first_epoch(patch)
        with pytest.raises(_Interrupted):
            trainers.run(config)
    assert (tmp_path / "run" / outputs.BACKUP_DIR).is_dir()
    assert not (tmp_path / "run" / outputs.REPORT_FILE).exists()
    return trainers.run(config), tmp_path / "run"


def _check_common(report, model_dir, kind):
    assert report["model_kind"] == kind
    assert report["resumed"] is True
    assert report["optimizer_steps"] == TINY["epochs"] * TINY["steps_per_epoch"]
    history = (model_dir / outputs.HISTORY_FILE).read_text().splitlines()
    assert [row.split(",")[0] for row in history[1:]] == ["0", "1"]  # epoch 0 not re-run
    model, raw = report["held_out"]["model"], report["held_out"]["raw_input_baseline"]
    for numbers in (model, raw):
        for key in ("map_at_r", "pair_roc_auc", "pair_eer", "tar_at_far_1e-3", "pair_accuracy",
                    "5_way_1_shot", "5_way_5_shot"):  # fmt: skip
            assert 0.0 <= numbers[key] <= 1.0, key
        assert numbers["pairs"] == 10_000
    for name in outputs.PLOT_FILES:
        assert (model_dir / name).stat().st_size > 1000, name
    if importlib.util.find_spec("tensorboard") is not None:
        events = os.listdir(model_dir / outputs.LOGS_DIR / "train")
        assert any(f.startswith("events.out.tfevents") for f in events)
    embedder = keras.saving.load_model(model_dir / outputs.MODEL_FILE)
    assert embedder.output_shape == (None, TINY["embedding_dim"])
    assert "serving_default" in report["export"]["signatures"]
    assert json.loads((model_dir / outputs.REPORT_FILE).read_text())["model_kind"] == kind
    assert not (model_dir / outputs.BACKUP_DIR).exists()


@pytest.mark.slow
def test_embedding_kind(tmp_path, monkeypatch):
    report, model_dir = _run_interrupted_then_resumed(tmp_path, monkeypatch, loss="triplet",
                                                      curriculum="0:semi-hard,1:hard")  # fmt: skip
    _check_common(report, model_dir, "embedding")
    assert report["loss"]["class"] == "TripletLoss"
    assert report["curriculum"] == {"0": "semi-hard", "1": "hard"}


@pytest.mark.slow
def test_proxy_kind(tmp_path, monkeypatch):
    report, model_dir = _run_interrupted_then_resumed(tmp_path, monkeypatch, loss="arcface")
    _check_common(report, model_dir, "proxy")
    assert report["loss"]["class"] == "ArcFace"


@pytest.mark.slow
@pytest.mark.parametrize("head", ["distance", "weighted_l1"])
def test_siamese_kind(tmp_path, monkeypatch, head):
    report, model_dir = _run_interrupted_then_resumed(
        tmp_path, monkeypatch, model_kind="siamese", pair_scorer=head, batch_size=16
    )
    _check_common(report, model_dir, "siamese")
    expected = {"distance": "PairContrastiveLoss", "weighted_l1": "BinaryCrossentropy"}[head]
    assert report["loss"]["class"] == expected
    assert report["batch"]["pairs"] == 16
    pair_model = keras.saving.load_model(model_dir / outputs.PAIR_MODEL_FILE)
    x = np.zeros((3, 8, 8, 1), "float32")
    scores = np.asarray(pair_model.predict([x, x + 16.0], verbose=0))
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    if head == "weighted_l1":
        assert np.all((scores > 0) & (scores < 1))  # a probability of "same class"
    # The whole Siamese network is exported: a `verify` signature beside the embedder's.
    assert "verify" in report["export"]["signatures"]


@pytest.mark.slow
def test_triplet_kind(tmp_path, monkeypatch):
    report, model_dir = _run_interrupted_then_resumed(
        tmp_path, monkeypatch, model_kind="triplet", curriculum="0:easy,1:hard", refresh_every=2,
        batch_size=16, distance="cosine",
    )  # fmt: skip
    _check_common(report, model_dir, "triplet")
    assert report["curriculum"] == {"0": "easy", "1": "hard"}
    assert report["loss"]["class"] == "TripletMarginLoss"
    assert report["loss"]["config"]["distance"] == "cosine"
    assert report["distance"] == "cosine"
    assert report["batch"]["triplets"] == 16
