"""Trains small tfmetric models with a fixed seed and op determinism; prints embeddings as JSON.

Run twice in fresh processes by `tests/test_determinism.py`.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402


def embedder():
    return keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)]
    )


def main():
    keras.utils.set_random_seed(1234)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    labels = (np.arange(64) % 4).astype("int64")
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).shuffle(64, seed=7).batch(16)
    outputs = {}
    model = embedder()
    model.compile(optimizer="adam", loss=tfmetric.losses.TripletLoss(margin=0.2))
    model.fit(dataset, epochs=1, verbose=0)
    outputs["triplet"] = model.predict(x, verbose=0).tolist()
    proxy = tfmetric.models.ProxyModel(embedder(), tfmetric.layers.ArcFace(4))
    proxy.compile(optimizer="adam")
    proxy.fit(dataset, epochs=1, verbose=0)
    outputs["arcface"] = proxy.predict(x, verbose=0).tolist()
    print(json.dumps(outputs))


if __name__ == "__main__":
    main()
