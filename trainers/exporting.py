"""The export stage of the trainer, through `tfmetric.export.export_for_serving`.

Writes `MODEL_DIR/export/<name>/<version>/`: a TF Serving SavedModel of the
embedder (`serving_default`, `embed_images` for image data and `retrieve` over
a gallery of training samples), TFLite variants and the parity report on
held-out samples, and `MODEL_DIR/export/models.config`.
"""

import numpy as np

from tfmetric.export import VARIANTS as TFLITE_VARIANTS
from trainers import outputs

EXPORT_NAME = "embedder"
# The main job's image models take pixel values in [0, 255] and rescale inside
# (`backbones.build_embedder`).
IMAGE_SCALING = "raw"
MAX_GALLERY = 5000
MAX_VALIDATION = 1000


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def save_model(model, path, is_image):
    """Saves `model` to the `.keras` file `path` atomically, recording its image scaling.

    The recorded scaling (`tfmetric.export.record_image_scaling`) makes
    `python -m export` give `embed_images` raw 0..255 pixels by default.
    """
    from tfmetric import export as export_lib

    with outputs.atomic_path(path) as tmp:
        model.save(tmp)
        if is_image:
            export_lib.record_image_scaling(tmp, IMAGE_SCALING)


def export(model_path, directory, train, test, distance, seed=0, tflite_variants=TFLITE_VARIANTS):
    """Exports the saved embedder; returns a JSON-friendly summary with the parity report.

    Args:
        model_path: The `.keras` embedder.
        directory: The TF Serving models directory (`MODEL_DIR/export`).
        train: Training `Data`: a seeded sample of at most 5,000 is the gallery of `retrieve`.
        test: Held-out `Data`: a seeded sample of at most 1,000 gives the parity numbers.
        distance: The retrieval distance.
        seed: Seed of the samples.
        tflite_variants: TFLite variants to write.
    """
    from tfmetric import export as export_lib

    rng = np.random.default_rng(seed)
    gallery_rows = np.sort(rng.permutation(len(train))[:MAX_GALLERY])
    test_rows = np.sort(rng.permutation(len(test))[:MAX_VALIDATION])
    image_spec = None
    if test.is_image:
        height, width, channels = test.x.shape[1:]
        image_spec = export_lib.ImageSpec(height, width, channels, scaling=IMAGE_SCALING)
    result = export_lib.export_for_serving(
        model_path,
        directory,
        name=EXPORT_NAME,
        distance=distance,
        image_spec=image_spec,
        gallery={
            "inputs": train.x[gallery_rows].astype(np.float32),
            "labels": train.y[gallery_rows].astype(np.int64),
        },
        validation=export_lib.ValidationData(
            test.x[test_rows].astype(np.float32), test.y[test_rows].astype(np.int64)
        ),
        tflite=tflite_variants,
    )
    summary = {
        "exporter": "tfmetric.export.export_for_serving",
        "version": result.version,
        "path": result.path,
        "signatures": list(result.signatures),
        "tflite": dict(result.tflite),
        "parity": result.report,
    }
    if result.report is not None:
        summary["parity_table"] = export_lib.format_report(result.report)
    return _json_safe(summary)
