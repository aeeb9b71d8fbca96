"""The main job's own errors (a module without TensorFlow, importable before it)."""


class InputError(ValueError):
    """Bad settings or data, found before training: reported in one line."""


class WorkerLost(RuntimeError):
    """A multi-worker run lost contact with a worker: every worker must be restarted."""


class TrainingDiverged(RuntimeError):
    """The loss or the embeddings became NaN or infinite: training stopped (exit status 4)."""


class ExportFailed(RuntimeError):
    """The export stage failed after training; the model and report.json were kept (exit status 5)."""
