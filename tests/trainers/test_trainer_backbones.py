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
