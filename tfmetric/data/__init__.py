"""Graph-mode `tf.data` samplers for metric learning: P×K batches, pairs, triplets, views.

All samplers draw indices inside `tf.data` graph functions and gather a whole
batch at once, deterministically for a given `seed`. They read numpy arrays,
`tf.data.Dataset`s of `(x, y)`, image folders (`image_directory`, `reid_folder`)
and TFRecord files (`tfrecord_source`); labels may be integers or strings.
"""

from tfmetric.data.class_balanced import class_balanced_dataset
from tfmetric.data.pairs import pair_dataset
from tfmetric.data.reid import reid_folder
from tfmetric.data.sources import (
    Source,
    as_source,
    encode_labels,
    image_directory,
    read_images,
    tfrecord_source,
)
from tfmetric.data.triplets import triplet_dataset
from tfmetric.data.views import image_augmentation, multi_view_dataset

__all__ = [
    "Source",
    "as_source",
    "class_balanced_dataset",
    "encode_labels",
    "image_augmentation",
    "image_directory",
    "multi_view_dataset",
    "pair_dataset",
    "read_images",
    "reid_folder",
    "tfrecord_source",
    "triplet_dataset",
]
