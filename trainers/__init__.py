"""The main job: `python -m trainers.train` trains, evaluates and exports an embedder.

Modules:

- `trainers.datasets`: loaders (`digits`, `directory:PATH`, `tfrecord:GLOB`,
  `npz:PATH`, `tfds:NAME`) and the `samples` / `classes` evaluation protocols.
- `trainers.backbones`: the default small CNN and `keras.applications` backbones.
- `trainers.losses`: every tfmetric loss and head by name, with its arguments.
- `trainers.evaluation`: held-out retrieval and verification numbers.
- `trainers.outputs`: `report.json`, the printed table, PNG plots and the
  TensorBoard embedding projector files.
- `trainers.train`: the absl-py program tying them together.
"""
