"""The main job's console: quiet output and one progress line per phase."""

import io
import os
import sys

import pytest

from trainers import console


def _write_native(text):
    # What native code (TensorFlow's C++ logs, the TFLite converter) does: write to fd 2.
    sys.stderr.flush()
    os.write(2, text.encode())


def test_quiet_hides_native_stderr(capfd):
    with console.quiet_output("quiet"):
        _write_native("W0000 converter noise\n")
        print("a table line")
    out, err = capfd.readouterr()
    assert out == "a table line\n"
    assert err == ""


def test_quiet_shows_the_hidden_lines_when_the_run_fails(capfd):
    with pytest.raises(RuntimeError):
        with console.quiet_output("quiet"):
            _write_native("E0000 the reason it failed\n")
            raise RuntimeError("boom")
    assert "E0000 the reason it failed" in capfd.readouterr().err


def test_expected_errors_keep_the_hidden_lines_hidden(capfd):
    with pytest.raises(ValueError):
        with console.quiet_output("quiet", expected=(ValueError,)):
            _write_native("I0000 unrelated\n")
            raise ValueError("bad flag")
    assert capfd.readouterr().err == ""


def test_info_leaves_the_logs(capfd):
    with console.quiet_output("info"):
        _write_native("I0000 a TensorFlow log line\n")
    assert "I0000 a TensorFlow log line" in capfd.readouterr().err


def test_progress_prints_one_line_per_phase_when_not_a_terminal():
    stream = io.StringIO()
    bar = console.Progress("train", 4, stream=stream)
    for step in range(1, 5):
        bar.update(step, loss=1.0 / step)
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("train     [" + "#" * 30 + "] 4/4 - ")
    assert lines[0].endswith("loss: 0.2500")


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    bar = console.Progress("evaluate", 2, stream=stream, enabled=False)
    bar.update()
    bar.close()
    assert stream.getvalue() == ""
