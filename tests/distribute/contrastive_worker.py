"""MoCo and the two-tower model under MirroredStrategy on 2 logical CPUs, beside one device.

Executed as `python contrastive_worker.py` in a fresh process (logical devices
must be configured before TensorFlow initialises its devices); prints one
JSON object.

- MoCo: the same global batches `[queries; keys]` trained under the strategy
  and on one device (losses, encoder and momentum weights, queue).
- Two-tower: one SGD step under the strategy; the reference is computed on
  one device from the documented per-replica semantics (each replica's
  in-batch softmax over its own half of the batch, the mean of the two
  shard losses), and the one-device step on the whole global batch is
  reported beside it.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402

SAMPLES, QUEUE, STEPS = 4, 12, 4  # global batch: 4 queries + their 4 keys


def moco(views, ids, kernel):
    encoder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, use_bias=False)])
    encoder.layers[0].kernel.assign(kernel)
    model = tfmetric.models.MomentumContrastModel(
        encoder, queue_size=QUEUE, momentum=0.9, temperature=0.5
    )
    model.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    dataset = tf.data.Dataset.from_tensor_slices((views, ids)).batch(2 * SAMPLES)
    losses = [model.fit(dataset, epochs=1, verbose=0).history["loss"][0] for _ in range(2)]
    # Every replica's copy of the mirrored state agrees (each device ran the update and enqueue).
    state = [model.momentum_encoder.layers[0].kernel, model.queue.embeddings, model.queue.count]
    copies_agree = all(
        all(np.array_equal(c.numpy(), copies[0].numpy()) for c in copies)
        for copies in (getattr(v.value, "values", (v.value,)) for v in state)
    )
    return {
        "losses": losses,
        "copies_agree": bool(copies_agree),
        "copies": len(getattr(state[0].value, "values", (None,))),
        "kernel": encoder.layers[0].kernel.numpy().tolist(),
        "momentum_kernel": model.momentum_encoder.layers[0].kernel.numpy().tolist(),
        "count": int(model.queue.count.numpy()),
        "queue_ids": model.queue.labels.numpy().tolist(),
        "queue": model.queue.embeddings.numpy().tolist(),
    }


def towers(query_kernel, item_kernel):
    query = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, use_bias=False)])
    item = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, use_bias=False)])
    query.layers[0].kernel.assign(query_kernel)
    item.layers[0].kernel.assign(item_kernel)
    model = tfmetric.models.TwoTowerModel(query, item, temperature=0.5)
    return model, query, item


def two_tower_mirrored(x, kernels):
    model, query, item = towers(*kernels)
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=tfmetric.losses.InBatchSoftmaxLoss(symmetric=True),
        jit_compile=False,
    )
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(8)
    loss = model.fit(dataset, epochs=1, verbose=0).history["loss"][0]
    return {
        "loss": loss,
        "query": query.layers[0].kernel.numpy().tolist(),
        "item": item.layers[0].kernel.numpy().tolist(),
        "scale": float(model.logits_layer.log_logit_scale.numpy()),
    }


def two_tower_reference(x, kernels, shards):
    """One SGD step (lr 0.5) on one device: the mean over `shards` of each shard's in-batch loss."""
    model, query, item = towers(*kernels)
    loss_fn = tfmetric.losses.InBatchSoftmaxLoss(symmetric=True)
    weights = model.trainable_weights
    with tf.GradientTape() as tape:
        losses = []
        for rows in np.array_split(np.arange(8), shards):
            logits = model({key: value[rows] for key, value in x.items()})
            losses.append(loss_fn(np.arange(len(rows)), logits))
        loss = tf.add_n(losses) / shards
    for weight, gradient in zip(weights, tape.gradient(loss, weights), strict=True):
        weight.assign(weight - 0.5 * gradient)
    return {
        "loss": float(loss),
        "query": query.layers[0].kernel.numpy().tolist(),
        "item": item.layers[0].kernel.numpy().tolist(),
        "scale": float(model.logits_layer.log_logit_scale.numpy()),
    }


def too_small_for_the_global_batch(views, ids):
    """Memories that hold one replica's shard but not the global batch: the errors."""
    errors = []
    encoder = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    xbm = tfmetric.models.CrossBatchMemoryModel(encoder, memory_size=6)  # global batch: 8
    xbm.compile(optimizer="sgd", loss=tfmetric.losses.ContrastiveLoss(), jit_compile=False)
    moco = tfmetric.models.MomentumContrastModel(encoder, queue_size=3)  # global keys: 4
    moco.compile(optimizer="sgd", jit_compile=False)
    dataset = tf.data.Dataset.from_tensor_slices((views, ids)).batch(8, drop_remainder=True)
    for model in (xbm, moco):
        try:
            model.fit(dataset, epochs=1, verbose=0)
            errors.append(None)
        except ValueError as error:
            errors.append(str(error))
    return errors


def main():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    rng = np.random.default_rng(0)
    # MoCo batches: rows 0-3 one view of samples s..s+3, rows 4-7 the other view.
    base = rng.normal(size=(SAMPLES * STEPS, 5)).astype("float32")
    views, ids = [], []
    for step in range(STEPS):
        sample = base[step * SAMPLES : (step + 1) * SAMPLES]
        noise = rng.normal(scale=0.1, size=(2, SAMPLES, 5)).astype("float32")
        views.append(np.concatenate([sample + noise[0], sample + noise[1]]))
        ids.append(np.tile(np.arange(step * SAMPLES, (step + 1) * SAMPLES), 2))
    views, ids = np.concatenate(views), np.concatenate(ids).astype("int64")
    moco_kernel = rng.normal(scale=0.5, size=(5, 3)).astype("float32")
    x = {
        "query": rng.normal(size=(8, 3)).astype("float32"),
        "candidate": rng.normal(size=(8, 5)).astype("float32"),
    }
    kernels = (
        rng.normal(scale=0.5, size=(3, 4)).astype("float32"),
        rng.normal(scale=0.5, size=(5, 4)).astype("float32"),
    )
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    with strategy.scope():
        moco_mirrored = moco(views, ids, moco_kernel)
        tower_mirrored = two_tower_mirrored(x, kernels)
        small_memory_errors = too_small_for_the_global_batch(views, ids)
    report = {
        "replicas": strategy.num_replicas_in_sync,
        "small_memory_errors": small_memory_errors,
        "moco": {"mirrored": moco_mirrored, "single": moco(views, ids, moco_kernel)},
        "two_tower": {
            "mirrored": tower_mirrored,
            "per_replica_reference": two_tower_reference(x, kernels, shards=2),
            "global_batch": two_tower_reference(x, kernels, shards=1),
        },
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
