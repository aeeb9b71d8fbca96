"""One worker of a 2-process MultiWorkerMirroredStrategy run (TF_CONFIG set by the test).

Trains a linear embedding with `TripletLoss` and `SupervisedContrastiveLoss`
(global-batch mining) for a few SGD steps, each worker feeding its half of
every global batch, and writes JSON with the final weights and those of plain
gradient descent on one device over the same global batches.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfmetric  # noqa: E402

GLOBAL_BATCH, INPUT_DIM, EMBED_DIM, STEPS, LEARNING_RATE = 12, 5, 3, 3, 0.3


def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(STEPS * GLOBAL_BATCH, INPUT_DIM)).astype("float32")
    labels = rng.integers(0, 4, size=STEPS * GLOBAL_BATCH).astype("int64")
    kernel = rng.normal(scale=0.5, size=(INPUT_DIM, EMBED_DIM)).astype("float32")
    return x, labels, kernel


def losses():
    return {
        "triplet": tfmetric.losses.TripletLoss(margin=0.5),
        "supcon": tfmetric.losses.SupervisedContrastiveLoss(temperature=0.5),
    }


def single_device(loss, x, labels, kernel):
    variable = tf.Variable(kernel)
    for step in range(STEPS):
        rows = slice(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)
        with tf.GradientTape() as tape:
            value = loss(labels[rows], tf.matmul(x[rows], variable))
        variable.assign_sub(LEARNING_RATE * tape.gradient(value, variable))
    return variable.numpy()


def distributed(strategy, loss, x, labels, kernel):
    def dataset_fn(context):
        local = context.get_per_replica_batch_size(GLOBAL_BATCH)
        index = np.arange(len(x)).reshape(STEPS, GLOBAL_BATCH)
        index = index[
            :, context.input_pipeline_id * local : (context.input_pipeline_id + 1) * local
        ]
        index = index.reshape(-1)
        return tf.data.Dataset.from_tensor_slices((x[index], labels[index])).batch(local)

    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((INPUT_DIM,)), keras.layers.Dense(EMBED_DIM, use_bias=False)]
        )
        model.layers[0].kernel.assign(kernel)
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(model.trainable_variables)

    @tf.function
    def train_step(inputs):
        def replica_step(local_x, local_labels):
            with tf.GradientTape() as tape:
                value = loss(local_labels, model(local_x))
            gradients = tape.gradient(value, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            return value

        return strategy.run(replica_step, args=inputs)

    for inputs in strategy.distribute_datasets_from_function(dataset_fn):
        train_step(inputs)
    return model.layers[0].kernel.numpy()


def main():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, labels, kernel = data()
    report = {}
    for name, loss in losses().items():
        report[name] = {
            "strategy": distributed(strategy, loss, x, labels, kernel).tolist(),
            "single": single_device(loss, x, labels, kernel).tolist(),
            "initial": kernel.tolist(),
        }
    path = sys.argv[1]
    with open(path + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
