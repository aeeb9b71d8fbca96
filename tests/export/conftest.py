"""Small trained embedders and data shared by the export tests."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

import tfmetric

NUM_CLASSES = 4


def blobs(per_class, dim, seed):
    """Gaussian blobs: class centres far apart, unit noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(NUM_CLASSES, dim)) * 3.0
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    inputs = centres[labels] + rng.normal(size=(len(labels), dim))
    return inputs.astype("float32"), labels.astype("int64")


def image_blobs(per_class, size, seed):
    """Images whose class is the colour of a bright square: pixels in [0, 1]."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), per_class)
    images = rng.uniform(0.0, 0.3, (len(labels), size, size, 3))
    colours = np.eye(3)[labels % 3] * (1.0 - 0.3 * (labels >= 3))[:, None]
    images[:, 2:-2, 2:-2, :] += 0.6 * colours[:, None, None, :]
    # Whole pixel levels, so PNG encoding is lossless.
    return np.round(np.clip(images, 0, 1) * 255) / 255, labels.astype("int64")


@pytest.fixture(scope="session")
def vector_model():
    """A Dense embedder trained with the triplet loss, and its validation blobs."""
    keras.utils.set_random_seed(0)
    x, y = blobs(32, 12, seed=0)
    model = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)],
        name="vector_embedder",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=tfmetric.losses.TripletLoss())
    model.fit(x, y, batch_size=32, epochs=5, verbose=0)
    x_val, y_val = blobs(16, 12, seed=1)
    return model, x_val, y_val


@pytest.fixture(scope="session")
def image_model():
    """A tiny convolutional embedder of 16x16 RGB images, trained a few steps."""
    keras.utils.set_random_seed(0)
    x, y = image_blobs(8, 16, seed=0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(6),
        ],
        name="image_embedder",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=tfmetric.losses.TripletLoss())
    model.fit(x.astype("float32"), y, batch_size=32, epochs=3, verbose=0)
    return model, x.astype("float32"), y


def blob_pairs(x, y, per_sample, seed):
    """Matching and non-matching index pairs of labelled samples (numpy only)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for i in range(len(y)):
        same = np.flatnonzero((y == y[i]) & (np.arange(len(y)) != i))
        other = np.flatnonzero(y != y[i])
        first += [i] * (2 * per_sample)
        second += list(rng.choice(same, per_sample, replace=False))
        second += list(rng.choice(other, per_sample, replace=False))
    first, second = np.asarray(first), np.asarray(second)
    return x[first], x[second], (y[first] == y[second]).astype("float32")


@pytest.fixture(scope="session")
def siamese_model():
    """Koch's Siamese network (WeightedL1 head, binary cross-entropy) on vector blobs."""
    keras.utils.set_random_seed(0)
    x, y = blobs(32, 12, seed=0)
    embedder = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)],
        name="pair_embedder",
    )
    model = tfmetric.models.SiameseModel(embedder, scorer=tfmetric.layers.WeightedL1())
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.BinaryCrossentropy())
    x1, x2, same = blob_pairs(x, y, per_sample=4, seed=0)
    model.fit((x1, x2), same, batch_size=64, epochs=10, verbose=0)
    x_val, y_val = blobs(16, 12, seed=1)
    return model, x_val, y_val


@pytest.fixture(scope="session")
def image_validation():
    """Held-out images of `image_blobs` (float32) and their labels."""
    x, y = image_blobs(6, 16, seed=2)
    return x.astype("float32"), y


def _prediction_log_class():
    """`tensorflow.serving.PredictionLog` (the fields warm-up uses), from the .proto field numbers."""
    pool = descriptor_pool.DescriptorPool()
    pending = [tensor_pb2.DESCRIPTOR]
    seen = set()
    while pending:  # TensorProto and its dependencies, dependencies first.
        file = pending[-1]
        missing = [d for d in file.dependencies if d.name not in seen]
        if missing:
            pending.extend(missing)
            continue
        pending.pop()
        if file.name not in seen:
            proto = descriptor_pb2.FileDescriptorProto()
            file.CopyToProto(proto)
            pool.Add(proto)
            seen.add(file.name)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="warmup_test.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["tensorflow/core/framework/tensor.proto"],
    )
    string, message = (
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        (descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE),
    )
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

    def add(msg, name, number, kind, label=optional, type_name=None):
        field = msg.field.add(name=name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name

    spec = fdp.message_type.add(name="ModelSpec")
    add(spec, "name", 1, string)
    add(spec, "signature_name", 3, string)
    request = fdp.message_type.add(name="PredictRequest")
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, string)
    add(entry, "value", 2, message, type_name=".tensorflow.TensorProto")
    add(request, "model_spec", 1, message, type_name=".tensorflow.serving.ModelSpec")
    add(request, "inputs", 2, message, repeated, ".tensorflow.serving.PredictRequest.InputsEntry")
    log = fdp.message_type.add(name="PredictLog")
    add(log, "request", 1, message, type_name=".tensorflow.serving.PredictRequest")
    prediction_log = fdp.message_type.add(name="PredictionLog")
    add(prediction_log, "predict_log", 6, message, type_name=".tensorflow.serving.PredictLog")
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.PredictionLog")
    )


@pytest.fixture(scope="session")
def replay_warmup():
    """Replays a version's warm-up records like TF Serving; returns the signatures called."""
    prediction_log = _prediction_log_class()

    def replay(version_dir, model_name):
        path = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
        model = tf.saved_model.load(version_dir)
        signatures = []
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log.FromString(record.numpy()).predict_log.request
            assert request.model_spec.name == model_name
            signatures.append(request.model_spec.signature_name)
            inputs = {
                key: tf.make_ndarray(tensor_pb2.TensorProto.FromString(value.SerializeToString()))
                for key, value in request.inputs.items()
            }
            outputs = model.signatures[request.model_spec.signature_name](
                **{k: tf.constant(v) for k, v in inputs.items()}
            )
            assert all(
                np.all(np.isfinite(v.numpy())) for v in outputs.values() if v.dtype.is_floating
            )
        return signatures

    return replay
