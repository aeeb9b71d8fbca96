"""Embedding models of the trainer."""

import numpy as np
import pytest

from trainers import backbones


def test_small_cnn_gives_unit_norm_embeddings_of_pixel_inputs():
    model = backbones.build_embedder((8, 8, 1), embedding_dim=16)
    x = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype("float32")
    out = np.asarray(model(x))
    assert out.shape == (3, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    raw = backbones.build_embedder((8, 8, 1), embedding_dim=16, l2_normalize=False)
    assert raw.layers[-1].name == "embedding"


def test_mlp_on_vectors_and_cnn_refuses_vectors():
    model = backbones.build_embedder((5,), backbone="mlp", embedding_dim=4)
    assert model(np.zeros((2, 5), "float32")).shape == (2, 4)
    with pytest.raises(ValueError, match="needs image inputs"):
        backbones.build_embedder((5,), backbone="small_cnn")


def test_keras_application_backbone_on_small_grayscale_images():
    model = backbones.build_embedder((8, 8, 1), backbone="MobileNetV3Small", embedding_dim=8)
    assert model.input_shape == (None, 8, 8, 1)
    assert model(np.zeros((1, 8, 8, 1), "float32")).shape == (1, 8)
    batch_norms = _batch_norms(model)
    assert batch_norms and {layer.momentum for layer in batch_norms} == {backbones.BN_MOMENTUM}


def _batch_norms(model):
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(_batch_norms(layer))
    return found


def test_moving_statistics_catch_up_with_the_batch_within_a_short_run(tmp_path):
    # After 50 training-mode calls on one batch, the moving statistics are
    # within 0.8**50 of the batch's: inference mode gives the training mode's
    # embeddings. With Keras' default momentum (0.99) 60% of the initial
    # statistics (mean 0, variance 1) would remain, compounded over the layers.
    import keras

    model = backbones.build_embedder((8, 8, 1), embedding_dim=8, l2_normalize=False)
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)).astype("float32")
    for _ in range(50):
        train_mode = np.asarray(model(x, training=True))
    inference = np.asarray(model(x, training=False))
    assert np.abs(inference - train_mode).max() < 0.05 * np.abs(train_mode).max()
    for layer in _batch_norms(model):
        mean = np.asarray(layer.moving_mean)
        assert np.abs(mean).max() > 0  # updated
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert {layer.momentum for layer in _batch_norms(loaded)} == {backbones.BN_MOMENTUM}
    with pytest.raises(ValueError, match="momentum"):
        backbones.set_batch_norm_momentum(model, 1.0)


def test_caffe_preprocessing_maps_rgb_pixels_to_bgr_minus_mean():
    import keras

    inputs = keras.Input((2, 2, 3))
    out = backbones._application_inputs(inputs, 3, "caffe")
    model = keras.Model(inputs, out)
    pixel = np.array([10.0, 20.0, 30.0], "float32")
    result = np.asarray(model(np.broadcast_to(pixel, (1, 2, 2, 3))))[0, 0, 0]
    np.testing.assert_allclose(result, [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-5)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"Unknown `--backbone` 'resnet5'.*'small_cnn'.*'resnet50'"):
        backbones.check("resnet5")
    backbones.check("ResNet50")
    backbones.check("mobilenet_v2")
    with pytest.raises(ValueError, match="--embedding_dim"):
        backbones.build_embedder((8, 8, 1), embedding_dim=0)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["ResNet50", "DenseNet121", "EfficientNetB0"])
def test_every_application_family_gets_the_short_run_batch_norm_momentum(backbone):
    # One application per preprocessing family (caffe, torch, in-model): each is built with
    # its own BatchNormalization momentum (0.99 in Keras), which the trainer replaces.
    model = backbones.build_embedder((32, 32, 3), backbone=backbone, embedding_dim=8)
    batch_norms = _batch_norms(model)
    assert len(batch_norms) > 10
    assert {layer.momentum for layer in batch_norms} == {backbones.BN_MOMENTUM}
