"""Finished evaluation rows on disk: ``rows.jsonl``, one JSON row per line, each keyed by
what determines its result (job, evaluation settings, model weights).

Every append rewrites the file through a temporary file that is flushed and fsync'ed
before it is renamed over the old one, so a kill at any moment leaves either the old or
the new file, never half a row. A rerun of the same evaluation skips the rows whose key is
already there; rows of other evaluations (another checkpoint, other settings) are kept but
never reused for this one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write


def row_key(parts: dict[str, Any]) -> str:
    """A stable hash of everything that determines a row's result."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class RowStore:
    """``rows.jsonl`` in ``out_dir``: :meth:`load` the finished rows, :meth:`append` one."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, dict[str, Any]]:
        """Finished rows by key (a line that does not parse is skipped: it is re-run)."""
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return rows
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("key"), str):
                rows[row["key"]] = row
        return rows

    def append(self, row: dict[str, Any]) -> None:
        old = self.path.read_text() if self.path.is_file() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        text = old + json.dumps(row, sort_keys=True, default=str) + "\n"

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())

        atomic_write(self.path, write)
