"""Writes `## Heading` sections of benchmarks/RESULTS.md, atomically.

The one writer of RESULTS.md for every benchmark script (`--write`). A section
is its `## Heading` line and everything up to the next `## ` heading line (its
`### ` subsections included). The file is rewritten through
`tfmetric._src.files.write_text`: under a temporary name, then renamed, with
the mode a plain `open` would give (a new file 0666 minus the umask, a
rewritten one its own), so a crash or a kill leaves the old file whole.

Scripts run as files (`python benchmarks/X.py`) have this directory first on
`sys.path` and `import _results`. `tfmetric` is imported when writing, not at
import, so a script's parent process (which may only spawn measured children)
does not load TensorFlow, and it resolves to the checkout the script put first
on `sys.path`.
"""

import os
import platform
import re

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
TITLE = "# Benchmark results\n"


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name for a table's "machine" line (`cpuinfo`, else `platform`)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def replace_section(heading, text, path=RESULTS):
    """Replaces the section `heading` of `path` by `text`, or appends it if absent.

    The sections before and after are kept byte for byte; one blank line
    separates `text` from the next section. A missing or empty file is
    created with the `# Benchmark results` title.

    Args:
        heading: The section's heading line, `"## Name"`.
        text: The whole new section: starts with the `heading` line.
        path: The file. Defaults to benchmarks/RESULTS.md.
    """
    section = _section(heading, text)
    old = _read(path)
    match = _find(heading, old)
    if match is None:
        new = _appended(old, section)
    else:
        end = old.find("\n## ", match.end())
        new = old[: match.start()] + section + ("" if end < 0 else old[end:])
    _write(path, new)


def print_table(lines, out=None):
    """Prints a table's `lines` and, with `out`, writes them to that file too (atomically).

    Returns the text (the lines joined, newline-terminated).
    """
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        _write(out, text)
    return text


def append_section(heading, text, path=RESULTS):
    """Appends `text` as a new section at the end of `path` (even if `heading` is there).

    Args:
        heading: The section's heading line, `"## Name"`.
        text: The whole new section: starts with the `heading` line.
        path: The file. Defaults to benchmarks/RESULTS.md.
    """
    _write(path, _appended(_read(path), _section(heading, text)))


def _section(heading, text):
    if not isinstance(heading, str) or not re.fullmatch(r"## [^\n]*\S", heading):
        raise ValueError(f"`heading` must be one `## Name` line; got {heading!r}.")
    if not isinstance(text, str) or text.split("\n", 1)[0] != heading:
        raise ValueError(
            f"`text` must be the whole section, starting with its heading line {heading!r}; "
            f"got {str(text)[:60]!r}."
        )
    return text.rstrip("\n") + "\n"


def _find(heading, content):
    """The first line equal to `heading` (not a longer heading it prefixes)."""
    return re.search(rf"^{re.escape(heading)}$", content, flags=re.MULTILINE)


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except FileNotFoundError:
        content = ""
    return content if content.strip() else TITLE


def _appended(content, section):
    return content.rstrip("\n") + "\n\n" + section


def _write(path, content):
    from tfmetric._src.files import write_text

    write_text(path, content)
