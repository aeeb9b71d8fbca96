"""What the main job prints: one progress bar per phase and the final tables.

`--log_level=quiet` (the default) hides TensorFlow's, XLA's, absl's, Keras' and
the TFLite converter's log lines: `TF_CPP_MIN_LOG_LEVEL=3` is set before
TensorFlow is imported, the Python loggers and warnings are turned down, and
what native code still writes to the standard error stream (converter notes,
LiteRT's delegate line) goes to a temporary file, shown only if the run fails.
`--log_level=info` leaves TensorFlow's defaults and absl's INFO lines;
`--log_level=debug` shows everything.
"""

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings

QUIET, INFO, DEBUG = "quiet", "info", "debug"
LEVELS = (QUIET, INFO, DEBUG)
_TAIL_LINES = 40
_visible_stderr = []  # the real standard error's descriptors while quiet_output hides fd 2
_PHASE_WIDTH = 9
_BAR_WIDTH = 30


def prepare_environment(level):
    """Sets TensorFlow's native log level; takes effect only before TensorFlow is imported."""
    if level == QUIET:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    elif level == DEBUG:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def _set_python_logging(level):
    from absl import logging as absl_logging

    absl_level = {QUIET: absl_logging.ERROR, INFO: absl_logging.INFO, DEBUG: absl_logging.DEBUG}
    absl_logging.set_verbosity(absl_level[level])
    python_level = {QUIET: logging.ERROR, INFO: logging.INFO, DEBUG: logging.DEBUG}[level]
    for name in ("tensorflow", "keras", "absl", "h5py", "matplotlib", "PIL"):
        logging.getLogger(name).setLevel(python_level)


@contextlib.contextmanager
def quiet_output(level, expected=()):
    """Applies `level` for the duration; in quiet mode, native stderr goes to a temporary file.

    If the body raises (an error not among `expected`), the last lines of what
    was hidden are written to the real standard error before it propagates.
    """
    prepare_environment(level)
    _set_python_logging(level)
    if level != QUIET:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sys.stderr.flush()
        saved = os.dup(2)
        hidden = tempfile.TemporaryFile(mode="w+b")
        os.dup2(hidden.fileno(), 2)
        _visible_stderr.append(saved)
        failed = False
        try:
            yield
        except BaseException as error:
            failed = not isinstance(error, expected)
            raise
        finally:
            sys.stderr.flush()
            _visible_stderr.remove(saved)
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                hidden.seek(0)
                lines = hidden.read().decode("utf-8", "replace").splitlines()[-_TAIL_LINES:]
                if lines:
                    tail = "\n".join(lines)
                    sys.stderr.write(f"Hidden log lines (last {len(lines)}):\n{tail}\n")
            hidden.close()


def visible_stderr():
    """A descriptor of the standard error the user sees (fd 2 may be hidden by quiet_output)."""
    return _visible_stderr[0] if _visible_stderr else 2


class Progress:
    """A one-line progress bar for one phase (train, evaluate, export).

    On a terminal the line is redrawn in place; otherwise it is printed once,
    when the phase ends, so that logs hold one line per phase.
    """

    def __init__(self, phase, total, stream=None, enabled=True, initial=0):
        self.phase = phase
        self.total = max(1, int(total))
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.count = int(initial)
        self.values = {}
        self.started = time.time()
        self.interactive = enabled and getattr(self.stream, "isatty", lambda: False)()
        self._closed = False

    def _line(self):
        done = min(self.count, self.total)
        filled = int(round(_BAR_WIDTH * done / self.total))
        bar = "#" * filled + "." * (_BAR_WIDTH - filled)
        values = "".join(f" - {k}: {_number(v)}" for k, v in self.values.items())
        return (f"{self.phase:<{_PHASE_WIDTH}} [{bar}] {done}/{self.total}"
                f" - {time.time() - self.started:.1f}s{values}")  # fmt: skip

    def update(self, count=None, **values):
        self.count = self.count + 1 if count is None else int(count)
        self.values.update(values)
        if self.interactive:
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def close(self, **values):
        """Ends the phase (the bar shows it complete)."""
        if self._closed:
            return
        self._closed = True
        self.count = max(self.count, self.total)
        self.values.update(values)
        if self.enabled:
            self.stream.write(("\r" if self.interactive else "") + self._line() + "\n")
            self.stream.flush()


def _number(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def training_progress(total_steps, initial_step=0, enabled=True):
    """A Keras callback drawing one bar over all training steps (epochs included)."""
    import keras

    class TrainingProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.bar = Progress("train", total_steps, enabled=enabled, initial=initial_step)
            self.epoch = 0
            self.steps_per_epoch = 1

        def on_train_begin(self, logs=None):
            self.steps_per_epoch = max(1, int(self.params.get("steps") or 1))

        def on_epoch_begin(self, epoch, logs=None):
            if self.bar.count == initial_step and epoch > 0:  # restored from a checkpoint
                self.bar.values["resumed_at_epoch"] = epoch + 1
                self.bar.count = epoch * self.steps_per_epoch
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            values = {"loss": float(logs["loss"])} if logs and "loss" in logs else {}
            self.bar.update(self.epoch * self.steps_per_epoch + batch + 1, **values)

        def on_epoch_end(self, epoch, logs=None):
            values = {k: float(v) for k, v in (logs or {}).items() if k.startswith("val_")}
            self.bar.update((epoch + 1) * self.steps_per_epoch, epoch=epoch + 1, **values)

        def on_train_end(self, logs=None):
            self.bar.close()

    return TrainingProgress()
