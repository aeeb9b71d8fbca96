"""Trains a CrossBatchMemoryModel under MirroredStrategy on 2 logical CPUs and on one device.

Executed as `python xbm_worker.py` in a fresh process (logical devices must be
configured before TensorFlow initialises its devices); prints one JSON object
with, for both runs, the per-epoch losses, the final kernel and the memory.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402

GLOBAL_BATCH, MEMORY, STEPS = 8, 16, 4


def train(x, y, kernel):
    embedder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    embedder.layers[0].kernel.assign(kernel)
    model = tfmetric.models.CrossBatchMemoryModel(embedder, memory_size=MEMORY)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=tfmetric.losses.ContrastiveLoss(margin=1.0),
        jit_compile=False,
    )
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)
    losses = [model.fit(dataset, epochs=1, verbose=0).history["loss"][0] for _ in range(2)]
    return {
        "losses": losses,
        "kernel": embedder.layers[0].kernel.numpy().tolist(),
        "count": int(model.memory.count.numpy()),
        "labels": model.memory.labels.numpy().tolist(),
        "embeddings": model.memory.embeddings.numpy().tolist(),
    }


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 5)).astype("float32")
    y = (np.arange(GLOBAL_BATCH * STEPS) % 5).astype("int64")
    kernel = rng.normal(scale=0.5, size=(5, 3)).astype("float32")
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    with strategy.scope():
        mirrored = train(x, y, kernel)
    single = train(x, y, kernel)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "mirrored": mirrored,
                      "single": single}))


if __name__ == "__main__":
    main()
