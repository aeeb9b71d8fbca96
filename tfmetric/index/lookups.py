"""The result of `Index.lookup`: neighbours with their ids, labels, distances and payloads."""

import dataclasses
import json

import numpy as np


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "" if value is None else str(value)


def format_table(header, rows):
    """Left-aligned text table, columns two spaces apart."""
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Lookups:
    """Nearest neighbours of `q` queries, closest first.

    Attributes:
        ids: `(q, k)` neighbour ids (integers or strings).
        distances: `(q, k)` float32 distances (similarities for a similarity).
        labels: `(q, k)` int64 labels, or `None` for an unlabelled index.
        payloads: `q` lists of `k` payloads, or `None` when the index holds
            none.

    `str(lookups)` (and `print`) gives a table with one row per neighbour;
    `lookups[i]` is the `Lookups` of query `i` alone (`i` may be negative;
    `IndexError` outside `[-q, q)`), iterating gives them in query order, and
    `len(lookups)` is `q`.
    """

    ids: np.ndarray
    distances: np.ndarray
    labels: np.ndarray | None = None
    payloads: list | None = None

    def __len__(self):
        return int(self.ids.shape[0])

    def __getitem__(self, i):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Lookups are indexed by query number; got {type(i).__name__}.")
        position = int(i) + len(self) if i < 0 else int(i)
        if not 0 <= position < len(self):
            raise IndexError(f"Query {int(i)} is out of range for {len(self)} queries.")
        rows = slice(position, position + 1)
        return Lookups(
            ids=self.ids[rows],
            distances=self.distances[rows],
            labels=None if self.labels is None else self.labels[rows],
            payloads=None if self.payloads is None else self.payloads[rows],
        )

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def rows(self):
        """One tuple `(query, rank, id, label, distance, payload)` per neighbour, rank from 1."""
        for q in range(len(self)):
            for r in range(self.ids.shape[1]):
                yield (
                    q,
                    r + 1,
                    self.ids[q, r].item(),
                    None if self.labels is None else int(self.labels[q, r]),
                    float(self.distances[q, r]),
                    None if self.payloads is None else self.payloads[q][r],
                )

    def __str__(self):
        header = ["query", "rank", "id", "label", "distance", "payload"]
        keep = [True, True, True, self.labels is not None, True, self.payloads is not None]
        rows = [[v for v, k in zip(row, keep, strict=True) if k] for row in self.rows()]
        return format_table([h for h, k in zip(header, keep, strict=True) if k], rows)

    def _repr_pretty_(self, printer, cycle):
        printer.text(str(self))
