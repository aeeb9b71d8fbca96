"""Trains a TripletModel under MirroredStrategy (2 logical CPUs) on offline-mined triplets.

Executed as `python offline_mining_worker.py` in a fresh process (logical
devices must be configured before TensorFlow initialises its devices). The
embedder's variables are mirrored; the sampler mines with them in the
`tf.data` graph, following a `MiningSchedule` (easy, then hard). Prints one
JSON object: the epoch losses, whether the mined triplets were valid, and
whether the hard chunk equals a brute-force search with the trained weights.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    x = np.concatenate([np.arange(24)[:, None], rng.normal(size=(24, 3))], 1).astype("float32")
    with strategy.scope():
        embedder = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model = tfmetric.models.TripletModel(embedder)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss=tfmetric.losses.TripletMarginLoss(margin=0.2),
            # Keras' XLA step under MirroredStrategy on logical CPUs reads variables across
            # devices, which XLA rejects (a TF known issue, as in mirrored_worker.py); the
            # mining blocks in the sampler are XLA-compiled.
            jit_compile=False,
        )
    schedule = tfmetric.callbacks.MiningSchedule(mining={0: "easy", 1: "hard"})
    data = tfmetric.data.triplet_dataset(
        x, y, 8, seed=0, embedder=embedder, mining=schedule, refresh_every=1
    )
    history = model.fit(data, steps_per_epoch=3, epochs=2, verbose=0, callbacks=[schedule])
    # The weights no longer move: a fresh iterator mines hard triplets with them.
    emb = np.asarray(embedder(x), np.float64)
    d = np.sqrt(((emb[:, None] - emb[None]) ** 2).sum(-1))
    valid, exact = True, True
    for (a, p, n), _ in data.take(2):
        for ia, ip, i_n in zip(*(t.numpy()[:, 0].astype(int) for t in (a, p, n)), strict=True):
            valid &= bool(y[ia] == y[ip] and ia != ip and y[ia] != y[i_n])
            pos = (y == y[ia]) & (np.arange(24) != ia)
            neg = y != y[ia]
            exact &= bool(abs(d[ia, ip] - d[ia, pos].max()) < 1e-5)
            exact &= bool(abs(d[ia, i_n] - d[ia, neg].min()) < 1e-5)
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "losses": [float(v) for v in history.history["loss"]],
                "valid": valid,
                "hard_equals_brute_force": exact,
            }
        )
    )


if __name__ == "__main__":
    main()
