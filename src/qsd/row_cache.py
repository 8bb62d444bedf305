"""The one resume mechanism of measured rows (DESIGN rule 6): each row saved as it finishes, keyed on its name, and
read back only when it was measured under the same record of what that row alone depends on.

A row's record names exactly its inputs (the protocol, the float weights' checksum, a method's effective settings,
a configuration's fingerprint, ...), never a stage's whole settings: changing `progress` or adding a budget
re-measures nothing that did not change. Used by stage 06's rows and packed rows and stage 02's float seed FIDs.
(The label dataset has its own store, `qsd.store`, keyed by configuration under one protocol.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from qsd.files import write_json


def canonical(record: dict) -> dict:
    """`record` as it reads back from JSON (tuples as lists, other values as their `str`), so that equal inputs
    compare equal before and after a save."""
    return json.loads(json.dumps(record, sort_keys=True, default=str))


class RowCache:
    """Rows under `directory`, one `<key>.json` each (and any artefacts beside it, `path(name, suffix)`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str, suffix: str = ".json") -> Path:
        """Where row `name`'s file with `suffix` lives."""
        return self.directory / (hashlib.sha256(name.encode()).hexdigest()[:16] + suffix)

    def get(self, name: str, depends_on: dict) -> dict | None:
        """The saved row `name`, if it was measured under `depends_on`; else None."""
        saved = self.path(name)
        if not saved.is_file():
            return None
        row = json.loads(saved.read_text())
        return row if row.get("depends_on") == canonical(depends_on) else None

    def put(self, name: str, depends_on: dict, row: dict) -> dict:
        """Save `row` (atomically) under `depends_on`; returns it as saved."""
        row = {**row, "depends_on": canonical(depends_on)}
        write_json(self.path(name), row)
        return row

    def measure(self, name: str, depends_on: dict, build: Callable[[], dict]) -> dict:
        """The saved row `name` if still valid, else `build()` saved under `depends_on`."""
        row = self.get(name, depends_on)
        return row if row is not None else self.put(name, depends_on, build())


def without_record(row: dict) -> dict:
    """A row's measured columns (without what it depended on)."""
    return {k: v for k, v in row.items() if k != "depends_on"}
