"""The main job: `python -m trainers.train` trains, evaluates and exports an embedder.

From Python, without absl: `trainers.run(trainers.RunConfig(...))` (the same
settings as the flags; see `trainers.config`).

Modules:

- `trainers.config`: `RunConfig`, every setting of a run, checked on creation.
- `trainers.job`: `run(config)`, the job itself.
- `trainers.distribution`: the `tf.distribute` strategy and `TF_CONFIG`.
- `trainers.datasets`: loaders (`digits`, `directory:PATH`, `tfrecord:GLOB`,
  `npz:PATH`, `tfds:NAME`) and the `samples` / `classes` evaluation protocols.
- `trainers.backbones`: the default small CNN and `keras.applications` backbones.
- `trainers.losses`: every tfmetric loss and head by name, with its arguments.
- `trainers.evaluation`: held-out retrieval and verification numbers.
- `trainers.outputs`: `report.json`, the printed table, PNG plots and the
  TensorBoard embedding projector files.
- `trainers.train`: the absl-py program (flags -> `RunConfig` -> `run`).
"""

from trainers.config import RunConfig


def run(config):
    """Runs the main job; see `trainers.job.run`."""
    from trainers import job

    return job.run(config)


__all__ = ["RunConfig", "run"]
