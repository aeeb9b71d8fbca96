"""Export embedders for serving: SavedModel (TF Serving), TFLite (LiteRT), parity reports.

`export_for_serving` is the whole stage (what `python -m export` runs): a
versioned, atomic TF Serving export with image decoding, exact retrieval and
pair verification in the graph, TFLite variants and a parity report. It first
resolves the model and every option into one `ExportPlan` (`plan_export`),
which the SavedModel builder, the TFLite stage, the parity report and the
metadata writer then read. The other names are its parts.
"""

from tfmetric.export.gallery import Gallery, load_gallery
from tfmetric.export.image_spec import ImageSpec
from tfmetric.export.inputs import load_inputs
from tfmetric.export.model_loading import (
    float32_copy,
    load_keras_file,
    record_image_scaling,
    recorded_image_scaling,
    resolve_embedder,
    saved_loss,
    trained_distance,
)
from tfmetric.export.parity import (
    TARGETS,
    VERIFY_TARGETS,
    ParityOptions,
    format_report,
    parity_report,
)
from tfmetric.export.plan import ExportPlan, Signature, TFLiteTarget, plan_export
from tfmetric.export.saved_model import METADATA_FILENAME, exact_search, save_embedder
from tfmetric.export.serving_layout import (
    ExportResult,
    export_for_serving,
    next_version,
    write_models_config,
)
from tfmetric.export.tflite import VARIANTS, LiteRTRunner, TFLiteOptions, convert_tflite
from tfmetric.export.validation import ValidationData, label_pairs
from tfmetric.export.verification import VerifyOptions
from tfmetric.export.warmup import WARMUP_FILENAME, predict_log_record, write_warmup_requests

__all__ = [
    "METADATA_FILENAME",
    "TARGETS",
    "VARIANTS",
    "VERIFY_TARGETS",
    "WARMUP_FILENAME",
    "ExportPlan",
    "ExportResult",
    "Gallery",
    "ImageSpec",
    "LiteRTRunner",
    "ParityOptions",
    "Signature",
    "TFLiteOptions",
    "TFLiteTarget",
    "ValidationData",
    "VerifyOptions",
    "convert_tflite",
    "exact_search",
    "export_for_serving",
    "float32_copy",
    "format_report",
    "label_pairs",
    "load_gallery",
    "load_inputs",
    "load_keras_file",
    "next_version",
    "parity_report",
    "plan_export",
    "predict_log_record",
    "record_image_scaling",
    "recorded_image_scaling",
    "resolve_embedder",
    "save_embedder",
    "saved_loss",
    "trained_distance",
    "write_models_config",
    "write_warmup_requests",
]
