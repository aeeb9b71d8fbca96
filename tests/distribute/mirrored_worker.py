"""Runs the in-batch losses under MirroredStrategy on 2 and 4 logical CPUs.

Executed as `python mirrored_worker.py` in a fresh process (logical devices
must be configured before TensorFlow initialises its devices); prints one JSON
object keyed by replica count (2: every loss, 4: a subset) with, per loss, the
loss and the weights after one SGD step under the strategy (`Model.fit`) and on
one device (plain gradient descent), per-replica mining checks and XLA
gradients.
"""

import contextlib
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402

NUM_DEVICES = 4
GLOBAL_BATCH, INPUT_DIM, EMBED_DIM, LEARNING_RATE = 16, 6, 4, 0.5


def make_losses(cross_replica=True):
    losses = tfmetric.losses
    kw = {"cross_replica": cross_replica}
    return {
        "triplet_semi_hard": losses.TripletLoss(margin=0.5, **kw),
        "triplet_hard": losses.TripletLoss(margin=0.5, mining="hard", **kw),
        "triplet_all": losses.TripletLoss(margin=0.5, mining="all", **kw),
        "contrastive": losses.ContrastiveLoss(margin=1.0, **kw),
        "multi_similarity": losses.MultiSimilarityLoss(**kw),
        "circle": losses.CircleLoss(gamma=16.0, **kw),
        "supcon": losses.SupervisedContrastiveLoss(temperature=0.5, **kw),
        "nt_xent": losses.NTXentLoss(temperature=0.5, **kw),
        "lifted_structure": losses.LiftedStructureLoss(**kw),
        "npairs": losses.NPairsLoss(**kw),
        "soft_nearest_neighbor": losses.SoftNearestNeighborLoss(temperature=2.0, **kw),
    }


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, INPUT_DIM)).astype("float32")
    # Classes spread so that each replica's shard alone misses most positive pairs.
    labels = np.array([0, 1, 2, 3, 0, 1, 4, 5, 2, 3, 4, 5, 6, 7, 6, 7], dtype="int64")
    kernel = rng.normal(scale=0.5, size=(INPUT_DIM, EMBED_DIM)).astype("float32")
    return x, labels, kernel


def build_model(kernel):
    model = keras.Sequential(
        [keras.Input((INPUT_DIM,)), keras.layers.Dense(EMBED_DIM, use_bias=False)]
    )
    model.layers[0].kernel.assign(kernel)
    return model


def fit_one_step(losses, x, labels, kernel):
    """One `Model.fit` step of every loss at once: `{name: (loss, kernel after the step)}`.

    One model with a bias-free Dense branch per loss (each starting from `kernel`),
    compiled with one loss per output: the total is the sum, so each branch's kernel
    takes its own loss's gradient, and Keras logs each output's loss (`NAME_loss`).
    One fit traces one training step instead of one per loss.
    """
    # jit_compile=False: Keras' XLA step under MirroredStrategy on logical CPUs
    # reads variables across devices, which XLA rejects (a TF known issue);
    # the loss itself compiles, see `xla_gradients`.
    inputs = keras.Input((INPUT_DIM,))
    outputs = {
        name: keras.layers.Dense(EMBED_DIM, use_bias=False, name=name)(inputs) for name in losses
    }
    model = keras.Model(inputs, outputs)
    for name in losses:
        model.get_layer(name).kernel.assign(kernel)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), loss=dict(losses),
                  jit_compile=False)  # fmt: skip
    targets = {name: labels for name in losses}
    dataset = tf.data.Dataset.from_tensor_slices((x, targets)).batch(GLOBAL_BATCH)
    history = model.fit(dataset, epochs=1, verbose=0).history
    return {
        name: (history[f"{name}_loss"][0], model.get_layer(name).kernel.numpy().tolist())
        for name in losses
    }


def single_device_step(loss, x, labels, kernel):
    """Plain gradient descent on one device: the reference for the strategy runs."""
    variable = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        value = loss(labels, tf.matmul(x, variable))
    variable.assign_sub(LEARNING_RATE * tape.gradient(value, variable))
    return float(value), variable.numpy().tolist()


def per_replica_losses(strategy, losses, embeddings, labels):
    """`{name: sum over replicas of the per-replica Keras loss on the global batch}`."""
    dataset = tf.data.Dataset.from_tensor_slices((embeddings, labels)).batch(GLOBAL_BATCH)
    inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))
    step = tf.function(lambda a, b: {name: loss(b, a) for name, loss in losses.items()})
    per_replica = strategy.run(step, args=inputs)
    return {
        name: float(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None))
        for name, value in per_replica.items()
    }


def xla_gradients(strategy, losses, embeddings, labels):
    """`{name: (global loss, its gradient w.r.t. each replica's embeddings)}`, under XLA."""
    dataset = tf.data.Dataset.from_tensor_slices((embeddings, labels)).batch(GLOBAL_BATCH)
    inputs = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function(jit_compile=True)
    def step(local_embeddings, local_labels):
        results = {}
        for name, loss in losses.items():
            with tf.GradientTape() as tape:
                tape.watch(local_embeddings)
                value = loss(local_labels, local_embeddings)
            results[name] = (value, tape.gradient(value, local_embeddings))
        return results

    per_replica = strategy.run(step, args=inputs)
    report = {}
    for name, (values, gradients) in per_replica.items():
        value = float(strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None))
        local = strategy.experimental_local_results(gradients)
        report[name] = (value, np.concatenate([g.numpy() for g in local]).tolist())
    return report


def proxy_model_step(strategy, x, labels, kernel):
    """One SGD step of a ProxyModel (CosFace head) under `strategy` (or none): kernel, proxies."""
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        keras.utils.set_random_seed(3)
        model = tfmetric.models.ProxyModel(build_model(kernel), tfmetric.layers.CosFace(8))
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE), jit_compile=False)
        dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(GLOBAL_BATCH)
        history = model.fit(dataset, epochs=1, verbose=0)
    weights = [w.numpy().tolist() for w in model.trainable_weights]
    return history.history["loss"][0], weights


def check_strategy(num_replicas, names):
    x, labels, kernel = data()
    strategy = tf.distribute.MirroredStrategy(
        devices=[f"/cpu:{i}" for i in range(num_replicas)],
        cross_device_ops=tf.distribute.ReductionToOneDevice(),
    )
    report = {"num_replicas": strategy.num_replicas_in_sync, "losses": {}}
    losses = {name: loss for name, loss in make_losses().items() if name in names}
    with strategy.scope():
        fitted = fit_one_step(losses, x, labels, kernel)
    for name, loss in losses.items():
        entry = {}
        entry["single_loss"], entry["single_kernel"] = single_device_step(loss, x, labels, kernel)
        entry["strategy_loss"], entry["strategy_kernel"] = fitted[name]
        report["losses"][name] = entry
    # Per-replica mining (cross_replica=False) on a few losses: the strategy's loss
    # is then the mean of the losses of the replicas' shards.
    embeddings = x @ kernel
    shards = np.split(np.arange(GLOBAL_BATCH), num_replicas)
    local = {name: make_losses(cross_replica=False)[name]
             for name in ("triplet_hard", "multi_similarity", "supcon")}  # fmt: skip
    with strategy.scope():
        values = per_replica_losses(strategy, local, embeddings, labels)
    report["per_replica"] = {}
    for name, loss in local.items():
        shard_mean = np.mean([float(loss(labels[s], embeddings[s])) for s in shards])
        report["per_replica"][name] = [values[name], float(shard_mean)]
    report["xla"] = {}
    compiled = {name: make_losses()[name] for name in ("triplet_semi_hard", "circle")}
    with strategy.scope():
        gradients = xla_gradients(strategy, compiled, embeddings, labels)
    for name, loss in compiled.items():
        reference = tf.constant(embeddings)
        with tf.GradientTape() as tape:
            tape.watch(reference)
            single = loss(labels, reference)
        report["xla"][name] = {
            "strategy": list(gradients[name]),
            "single": [float(single), tape.gradient(single, reference).numpy().tolist()],
        }
    if num_replicas == 4:
        # reduction="sum": the sum over replicas of the per-replica sums.
        summed = tfmetric.losses.MultiSimilarityLoss(reduction="sum")
        with strategy.scope():
            strategy_sum = per_replica_losses(strategy, {"sum": summed}, embeddings, labels)
        report["sum_reduction"] = [strategy_sum["sum"], float(summed(labels, embeddings))]
        report["proxy_model"] = {
            "strategy": proxy_model_step(strategy, x, labels, kernel),
            "single": proxy_model_step(None, x, labels, kernel),
        }
    return report


def main():
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(NUM_DEVICES)],
    )
    # Grappler's graph rewrites are not under test here, and on the strategy's
    # replicated training graph they took ~15 of the process's ~110 CPU-s.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    everything = list(make_losses())
    subset = ["triplet_semi_hard", "npairs", "supcon"]
    # Every loss on 2 replicas (each shard alone still misses most positive pairs), a subset
    # on 4: building the replicated graph of every loss on 4 replicas took ~30 CPU-s more.
    report = {2: check_strategy(2, everything), 4: check_strategy(4, subset)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
