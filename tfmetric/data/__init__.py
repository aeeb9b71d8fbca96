"""Graph-mode `tf.data` samplers for metric learning: P×K batches, pairs, triplets, views.

All samplers draw indices inside `tf.data` graph functions and gather a whole
batch at once, deterministically for a given `seed`. They read numpy arrays,
`tf.data.Dataset`s of `(x, y)`, image folders (`image_directory`) and TFRecord
files (`tfrecord_source`).
"""

from tfmetric.data.class_balanced import class_balanced_dataset
from tfmetric.data.pairs import pair_dataset
from tfmetric.data.sources import Source, as_source, image_directory, tfrecord_source
from tfmetric.data.triplets import triplet_dataset
from tfmetric.data.views import image_augmentation, multi_view_dataset

__all__ = [
    "Source",
    "as_source",
    "class_balanced_dataset",
    "image_augmentation",
    "image_directory",
    "multi_view_dataset",
    "pair_dataset",
    "tfrecord_source",
    "triplet_dataset",
]
