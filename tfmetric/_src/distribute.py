"""`tf.distribute` helpers for losses that mine over the global batch.

Only XLA-supported ops are used, as `TPUStrategy` requires. Every function
is a no-op or returns `None` outside a multi-replica strategy, and on other
backends than TensorFlow.
"""

import keras
from keras import ops


def replica_context():
    """The replica context of a multi-replica strategy, or `None`."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def replica_share(value):
    """`value` divided by the number of replicas of a multi-replica strategy.

    A replica that reduces only its own shard returns this share of its mean,
    as Keras' own losses do, so that the sum over replicas (what the gradient
    all-reduce takes) is the mean over the shards.
    """
    context = replica_context()
    if context is None:
        return value
    return value / context.num_replicas_in_sync


def in_cross_replica_build():
    """Whether this runs in the cross-replica context of a strategy (Keras' build).

    `Model.fit` under a strategy builds the compiled loss, in the cross-replica
    context, on the replica-mean of the first batch, which turns integer
    labels into arbitrary floats; that value is discarded.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context()


def all_gather(context, value):
    """Concatenates `value` of every replica along axis 0 (differentiable).

    The all-gather sends each value to the device it lives on; a tensor
    traced without one (`MultiWorkerMirroredStrategy` with one device per
    worker traces the replica function outside any device scope) is first
    placed on the worker's device.
    """
    import tensorflow as tf

    devices = context.strategy.extended.worker_devices
    if not value.device and len(devices) == 1:
        with tf.device(devices[0]):
            value = tf.identity(value)
    return context.all_gather(value, axis=0)


def local_rows(context, values, local):
    """The rows of `values` (global batch) that belong to this replica.

    `local` is any tensor with this replica's batch size as its first
    dimension; replicas may hold different batch sizes (a last, partial
    batch).
    """
    import tensorflow as tf

    size = tf.shape(local)[0]
    sizes = all_gather(context, tf.reshape(size, [1]))
    before = tf.range(context.num_replicas_in_sync) < context.replica_id_in_sync_group
    offset = tf.reduce_sum(tf.where(before, sizes, 0))
    return tf.slice(values, [offset], [size])


def sum_over_replicas(context, value):
    """The sum of a scalar over all replicas, with the gradient of the all-gather."""
    return ops.sum(all_gather(context, ops.reshape(value, (1,))))
