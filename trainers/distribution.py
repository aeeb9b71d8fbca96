"""The main job's `tf.distribute` strategy and, on several machines, each worker's role.

`--strategy=multi_worker` runs `tf.distribute.MultiWorkerMirroredStrategy`
(TensorFlow's synchronous data parallelism over machines). Every worker runs the
same command with the same flags; only the `TF_CONFIG` environment variable
differs (its `task`). `cluster_spec()` reads and checks `TF_CONFIG` without
running TensorFlow, so a malformed one fails before any work. The chief
(`task.type == "chief"`, or worker 0 when the cluster has no chief) writes the
run directory; the other workers write to temporary directories they remove.
See docs/distributed.md.
"""

import dataclasses
import json
import os

TF_CONFIG = "TF_CONFIG"
TASK_TYPES = ("chief", "worker")
DEFAULT_CLUSTER_TIMEOUT = 600.0


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """The cluster of a multi-worker run, from `TF_CONFIG`.

    Attributes:
        cluster: `{task type: [address, ...]}`.
        task_type: This process's task type, `"chief"` or `"worker"`.
        task_index: This process's index within its type.
    """

    cluster: dict
    task_type: str
    task_index: int

    @property
    def is_chief(self):
        if "chief" in self.cluster:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def address(self):
        return self.cluster[self.task_type][self.task_index]

    @property
    def num_workers(self):
        return sum(len(v) for v in self.cluster.values())

    def peers(self):
        """The other tasks' addresses."""
        return [a for tasks in self.cluster.values() for a in tasks if a != self.address]


def _fail(message):
    raise ValueError(f"`{TF_CONFIG}`: {message} (see docs/distributed.md).")


def cluster_spec(environ=None):
    """Reads and checks `TF_CONFIG` (pure Python: no TensorFlow op runs).

    Returns:
        A `ClusterSpec`.

    Raises:
        ValueError: naming what is wrong: no `TF_CONFIG`, not JSON, no
            `cluster` of `chief`/`worker` address lists, a `task` whose type is
            not in the cluster or whose index is out of range, or a malformed
            address.
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    if not text:
        raise ValueError(
            f"`--strategy=multi_worker` needs the `{TF_CONFIG}` environment variable: the "
            'cluster and this worker\'s task, e.g. {"cluster": {"worker": ["host1:12345", '
            '"host2:12345"]}, "task": {"type": "worker", "index": 0}} '
            "(see docs/distributed.md)."
        )
    try:
        config = json.loads(text)
    except ValueError as error:
        _fail(f"not valid JSON ({error})")
    if not isinstance(config, dict):
        _fail(f"must be a JSON object with `cluster` and `task`; got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        _fail('needs `cluster`: {"worker": ["host:port", ...]} (and optionally "chief")')
    for kind, addresses in cluster.items():
        if kind not in TASK_TYPES:
            _fail(f"`cluster` task types must be among {list(TASK_TYPES)}; got {kind!r}")
        if not isinstance(addresses, list) or not addresses:
            _fail(f"`cluster.{kind}` must be a non-empty list of 'host:port'; got {addresses!r}")
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit():
                _fail(f"`cluster.{kind}` holds {address!r}, not a 'host:port' address")
    if "chief" in cluster and len(cluster["chief"]) != 1:
        _fail(f"`cluster.chief` must hold one address; got {len(cluster['chief'])}")
    if not isinstance(task, dict):
        _fail('needs `task`: {"type": "worker", "index": 0}')
    task_type, task_index = task.get("type"), task.get("index")
    if task_type not in cluster:
        _fail(f"`task.type` must be one of the cluster's task types {sorted(cluster)}; "
              f"got {task_type!r}")  # fmt: skip
    if isinstance(task_index, bool) or not isinstance(task_index, int):
        _fail(f"`task.index` must be an integer; got {task_index!r}")
    if not 0 <= task_index < len(cluster[task_type]):
        _fail(f"`task.index` {task_index} is out of range: `cluster.{task_type}` has "
              f"{len(cluster[task_type])} address(es), indices 0..{len(cluster[task_type]) - 1}")  # fmt: skip
    return ClusterSpec(dict(cluster), task_type, task_index)


# Run in a separate process: TensorFlow may hold the interpreter while it waits for the
# cluster, so no thread or signal handler of the waiting process can time it out.
_WATCHDOG = r"""
import os, select, signal, socket, sys
parent, timeout, me, peers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if ready:
    sys.exit(0)
def reachable(address):
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False
missing = [a for a in peers if not reachable(a)] or peers
sys.stderr.write(
    f"error: worker {me} could not reach the cluster within {timeout:g} s "
    f"(--cluster_timeout): no answer from {', '.join(missing)}. Start every worker with the "
    "same flags, and check the addresses in TF_CONFIG and the firewall.\n")
sys.stderr.flush()
os.kill(parent, signal.SIGKILL)
"""


def _multi_worker_strategy(cluster, timeout, stderr_fd=None):
    """Creates the strategy, which waits for every worker.

    A watchdog process ends this process when the cluster does not form within
    `timeout` seconds, after writing which addresses did not answer.
    """
    import subprocess
    import sys

    import tensorflow as tf

    class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """`reduce` accepting what Keras 3's `fit` passes it on several workers.

        `fit` reduces a whole `(x, y)` batch at once (to build the model) and
        reduces scalar logs along `axis=0`; TensorFlow's `reduce` takes one
        value, and an axis only for values that have one. Here a nest is
        reduced value by value, and a scalar across replicas only.
        """

        def reduce(self, reduce_op, value, axis=None):
            parent = super()

            def one(v):
                local = self.experimental_local_results(v)[0]
                rank = getattr(getattr(local, "shape", None), "rank", None)
                return parent.reduce(reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(one, value)

    me = f"{cluster.task_type}:{cluster.task_index} ({cluster.address})"
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), me, *cluster.peers()],
        stdin=subprocess.PIPE, stderr=stderr_fd,
    )  # fmt: skip
    try:
        strategy = MultiWorkerStrategy()
    finally:
        watchdog.stdin.write(b"ready\n")
        watchdog.stdin.close()
        watchdog.wait()
    return strategy


def make_strategy(name, tpu=None, cluster_timeout=DEFAULT_CLUSTER_TIMEOUT, stderr_fd=None):
    """Creates the strategy: the first thing that runs TensorFlow in the main job.

    Args:
        name: `"default"`, `"mirrored"`, `"multi_worker"` or `"tpu"`.
        tpu: TPU address for `"tpu"` (default: the local TPU).
        cluster_timeout: Seconds a multi-worker run waits for the other workers;
            past it the process is ended, after a message naming the addresses
            that did not answer (written to `stderr_fd`, default: standard
            error).
        stderr_fd: Where that message goes.

    Returns:
        `(strategy, cluster)`: the strategy, and the `ClusterSpec` of a
        multi-worker run (else `None`).
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy(), None
    if name == "mirrored":
        # The default all-reduce aborted ("collective instance ... shape mismatch")
        # beside the losses' own all-gather; reducing to one device is exact.
        strategy = tf.distribute.MirroredStrategy(
            cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
        return strategy, None
    if name == "multi_worker":
        cluster = cluster_spec()
        return _multi_worker_strategy(cluster, cluster_timeout, stderr_fd), cluster
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise ValueError(f"`--strategy=tpu`: no TPU found ({error}).") from None
    return tf.distribute.TPUStrategy(resolver), None
