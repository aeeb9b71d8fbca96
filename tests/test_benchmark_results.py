"""benchmarks/_results.py: the one writer of RESULTS.md sections (no benchmark is run)."""

import importlib.util
import os
import shutil

import pytest

from tfmetric._src import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC = importlib.util.spec_from_file_location(
    "benchmarks_results", os.path.join(ROOT, "benchmarks", "_results.py")
)
results = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(results)

BEFORE = "# Benchmark results\n\nIntro line.\n\n## Alpha\n\nalpha text\n\n"
MIDDLE = "## Beta\n\nold beta\n\n### Beta detail\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
AFTER = "\n## Gamma\n\ngamma text\n"
FILE = BEFORE + MIDDLE + AFTER


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def umask():
    """Sets a umask for the test and restores the previous one."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def test_replace_middle_section_keeps_the_others_byte_identical(tmp_path):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE)
    results.replace_section("## Beta", "## Beta\n\nnew beta\n", path)
    assert _read(path) == BEFORE + "## Beta\n\nnew beta\n" + AFTER


def test_replace_last_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE)
    results.replace_section("## Gamma", "## Gamma\n\nnew gamma\n\n\n", path)
    assert _read(path) == BEFORE + MIDDLE + "\n## Gamma\n\nnew gamma\n"


def test_replace_matches_whole_heading_lines_only(tmp_path):
    # "## Losses speed" prefixes "## Losses speed under JAX", and a sentence names it.
    path = tmp_path / "RESULTS.md"
    head = "# T\n\nSee ## Losses speed below.\n\n## Losses speed under JAX\n\njax\n\n"
    _write(path, head + "## Losses speed\n\nold\n")
    results.replace_section("## Losses speed", "## Losses speed\n\nnew\n", path)
    assert _read(path) == head + "## Losses speed\n\nnew\n"


def test_replace_appends_a_missing_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE + "\n\n")
    results.replace_section("## Delta", "## Delta\n\ndelta\n", path)
    assert _read(path) == FILE + "\n## Delta\n\ndelta\n"


def test_append_section_adds_a_second_copy(tmp_path):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE)
    results.append_section("## Beta", "## Beta\n\nnewer beta\n", path)
    assert _read(path) == FILE + "\n## Beta\n\nnewer beta\n"


@pytest.mark.parametrize("write", [results.replace_section, results.append_section])
def test_creates_a_missing_file(tmp_path, write):
    path = tmp_path / "RESULTS.md"
    write("## Delta", "## Delta\n\ndelta\n", path)
    assert _read(path) == "# Benchmark results\n\n## Delta\n\ndelta\n"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_file_mode_is_what_a_plain_open_gives(tmp_path, umask, mask, mode):
    # A new file: 0666 minus the umask. A rewritten file keeps its own mode, as `open(path, "w")`
    # would (never the temporary file's 0600).
    umask(mask)
    created = tmp_path / "new.md"
    results.replace_section("## Delta", "## Delta\n\ndelta\n", created)
    existing = tmp_path / "old.md"
    _write(existing, FILE)
    own = 0o640 if mode != 0o640 else 0o604
    os.chmod(existing, own)
    results.replace_section("## Beta", "## Beta\n\nnew\n", existing)
    assert os.stat(created).st_mode & 0o777 == mode
    assert os.stat(existing).st_mode & 0o777 == own


def test_failed_write_leaves_the_file_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE)
    seen = []

    def failing_fsync(fd):
        seen.append(sorted(os.listdir(tmp_path)))  # the temporary holds the new text
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        results.replace_section("## Beta", "## Beta\n\nnew beta\n", path)
    monkeypatch.undo()
    assert len(seen) == 1 and len(seen[0]) == 2  # RESULTS.md and a temporary were there
    assert _read(path) == FILE
    assert os.listdir(tmp_path) == ["RESULTS.md"]  # the temporary is removed


@pytest.mark.parametrize(
    "heading, text",
    [
        ("Beta", "Beta\n\nx\n"),  # not a `## ` heading
        ("### Beta", "### Beta\n\nx\n"),  # a subsection
        ("## Beta\n", "## Beta\n\nx\n"),  # two lines
        ("## Beta", "beta\n"),  # text without its heading
        ("## Beta", "## Betamax\n\nx\n"),  # text under another heading
    ],
)
def test_bad_heading_or_text_raises_before_writing(tmp_path, heading, text):
    path = tmp_path / "RESULTS.md"
    _write(path, FILE)
    with pytest.raises(ValueError, match="heading"):
        results.replace_section(heading, text, path)
    assert _read(path) == FILE


def test_rewriting_every_section_of_the_real_file_changes_nothing(tmp_path):
    path = tmp_path / "RESULTS.md"
    shutil.copyfile(results.RESULTS, path)
    original = _read(path)
    lines = original.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    assert len(starts) >= 5
    for first, end in zip(starts, starts[1:] + [len(lines)], strict=True):
        section = "\n".join(lines[first:end]).rstrip("\n") + "\n"
        results.replace_section(lines[first], section, path)
    assert _read(path) == original


def test_cpu_name_reads_the_model_name_or_falls_back(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Example CPU 9000\nflags\t: a b\n")
    assert results.cpu_name(str(cpuinfo)) == "Example CPU 9000"
    fallback = results.cpu_name(str(tmp_path / "missing"))
    assert isinstance(fallback, str) and fallback and fallback != "Example CPU 9000"
