"""Results store of labelled configurations: the dataset of paper §3.2 (random configurations + FID).

One SQLite database per dataset, written by one process (the driver). Every labelled configuration is one
row of `labels`, keyed by its `QuantConfig.fingerprint`, with the configuration as JSON, the metrics as
columns and per-row provenance (git SHA, package versions, device, wall time). Each row is committed on its
own (WAL journal, synchronous=FULL), so a run killed at any moment keeps every row it finished and a
restarted run skips them: nothing is lost and nothing is written twice. No pickle is ever written.

The `meta` table holds the *protocol* every label was made under (model and checkpoint hash, images, steps,
guidance, seeds, quantizer options). Opening a dataset under a different protocol raises
`ProtocolMismatchError`, so labels made under different protocols are never mixed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qsd.config import QuantConfig
from qsd.errors import CorruptFileError, MissingFileError, ProtocolMismatchError, QsdError

SCHEMA_VERSION = 1
METRICS = ("fid", "prompt_accuracy", "clip_score", "sample_mse", "eps_error", "avg_bits", "quantized_bytes",
           "summed_error", "seconds")
"""Metric columns (NULL where a model has no such metric, e.g. prompt accuracy for the paper's models)."""
TEST_KIND = "test"
KINDS = ("float", "uniform", "random", "imported", "constructed", TEST_KIND)
"""Label kinds: the reference rows, random configurations, rows imported from elsewhere, configurations built by
stage 05 (their `name` says how) and stage 02's test stream (never trained on, never used to choose anything)."""
DATASET_KINDS = tuple(kind for kind in KINDS if kind not in ("constructed", TEST_KIND))
"""Every kind but stage 05's constructed rows and the test stream: the rows stage 02's summary and figures describe
and predictors may train on."""


def labelled(labels: pd.DataFrame, kinds: Iterable[str]) -> pd.DataFrame:
    """The rows of `labels` (a store's table) of `kinds` that have a FID, in store order, renumbered from 0."""
    return labels[labels["kind"].isin(list(kinds)) & labels["fid"].notna()].reset_index(drop=True)


@dataclass(frozen=True)
class LabelRecord:
    """One labelled configuration, as stored."""

    config: QuantConfig
    kind: str
    name: str
    metrics: Mapping[str, float | None]
    provenance: Mapping[str, object] = field(default_factory=dict)
    sample_index: int | None = None
    """Position in the random-configuration seed stream (random rows only)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise QsdError(f"unknown label kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise QsdError(f"unknown metric(s) {sorted(unknown)}; the store has columns {', '.join(METRICS)}")

    @property
    def fingerprint(self) -> str:
        return self.config.fingerprint


def _canonical(protocol: Mapping) -> str:
    return json.dumps(protocol, sort_keys=True, default=str)


def protocol_difference(stored: Mapping, requested: Mapping) -> list[str]:
    """Human-readable `key: stored -> requested` lines for every protocol entry that differs."""
    keys = sorted(set(stored) | set(requested))
    return [f"{k}: {stored.get(k, '<absent>')!r} -> {requested.get(k, '<absent>')!r}" for k in keys
            if _canonical({"v": stored.get(k)}) != _canonical({"v": requested.get(k)})]


class LabelStore:
    """The SQLite dataset at `path`. With `protocol`, creates the dataset or checks that it matches the stored
    one (`ProtocolMismatchError` otherwise); without, opens an existing dataset for reading and appending under
    its own protocol."""

    def __init__(self, path: str | Path, protocol: Mapping | None = None) -> None:
        self.path = Path(path)
        if protocol is None and not self.path.exists():
            raise MissingFileError(f"no label dataset at {self.path}; create one by passing its protocol")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._create_tables()
            stored = self._meta("protocol")
        except sqlite3.DatabaseError as exc:
            raise CorruptFileError(f"{self.path} is not a qsd label dataset (SQLite error: {exc})") from exc
        if stored is None:
            if protocol is None:
                raise CorruptFileError(f"{self.path} has no protocol record; it was not written by qsd")
            self._set_meta("protocol", _canonical(protocol))
            self._set_meta("schema_version", str(SCHEMA_VERSION))
            self._set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            stored = _canonical(protocol)
        self.protocol: dict = json.loads(stored)
        if protocol is not None and _canonical(protocol) != stored:
            diff = "\n  ".join(protocol_difference(self.protocol, json.loads(_canonical(protocol))))
            raise ProtocolMismatchError(
                f"{self.path} holds labels made under another protocol; refusing to mix them. Differences "
                f"(stored -> requested):\n  {diff}\nUse another run_id (a new dataset) or the stored protocol."
            )

    def _create_tables(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        columns = ", ".join(f"{m} REAL" for m in METRICS)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labels (fingerprint TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,"
            f" sample_index INTEGER, config TEXT NOT NULL, {columns}, provenance TEXT NOT NULL,"
            " labelled_at TEXT NOT NULL)"
        )

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------------ writing
    def add(self, record: LabelRecord) -> bool:
        """Commit one row; False (and nothing written) if its configuration is already labelled."""
        values = [record.metrics.get(m) for m in METRICS]
        cursor = self._db.execute(
            f"INSERT INTO labels VALUES ({', '.join('?' * (7 + len(METRICS)))}) ON CONFLICT(fingerprint) DO NOTHING",
            [record.fingerprint, record.kind, record.name, record.sample_index, record.config.dumps(),
             *(None if v is None else float(v) for v in values),
             json.dumps(record.provenance, sort_keys=True, default=str), time.strftime("%Y-%m-%dT%H:%M:%S%z")],
        )
        return cursor.rowcount == 1

    def add_many(self, records: Iterable[LabelRecord]) -> int:
        """`add` each record; returns how many were new."""
        return sum(self.add(r) for r in records)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM labels").fetchone()[0]

    def __contains__(self, fingerprint: object) -> bool:
        return self._db.execute("SELECT 1 FROM labels WHERE fingerprint = ?", (fingerprint,)).fetchone() is not None

    def fingerprints(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT fingerprint FROM labels")}

    def stored(self) -> pd.DataFrame:
        """One row per label as stored: fingerprint, kind, name, sample_index, config (JSON text), metrics,
        provenance (JSON text), labelled_at. Ordered as labelled."""
        return pd.read_sql_query("SELECT * FROM labels ORDER BY rowid", self._db)

    def to_pandas(self) -> pd.DataFrame:
        """The `stored` rows plus `method` and `w_bits`, the quantization every unit of the row's configuration
        shares (`QuantConfig.shared_spec`: set for the uniform rows, empty for mixed and float ones)."""
        frame = self.stored()
        specs = [QuantConfig.loads(text).shared_spec() for text in frame["config"]]
        frame["method"] = [None if spec is None else spec.method for spec in specs]
        frame["w_bits"] = pd.array([None if spec is None else spec.w_bits for spec in specs], dtype="Int64")
        return frame

    def configs(self) -> dict[str, QuantConfig]:
        """fingerprint -> QuantConfig of every row."""
        return {fp: QuantConfig.loads(text) for fp, text in self._db.execute("SELECT fingerprint, config FROM labels")}

    def to_csv(self, path: str | Path) -> Path:
        """The `stored` rows as CSV."""
        self.stored().to_csv(path, index=False)
        return Path(path)

    def to_parquet(self, path: str | Path) -> Path:
        """The `stored` rows as Parquet."""
        self.stored().to_parquet(path, index=False)
        return Path(path)

    def summary(self, kinds: Iterable[str] | None = None) -> dict:
        """Dataset card of the rows of `kinds` (default all): counts per kind, avg-bits and FID ranges, the
        protocol."""
        frame = self.stored()
        if kinds is not None:
            frame = frame[frame["kind"].isin(list(kinds))]

        def span(column: str) -> list[float] | None:
            values = frame[column].dropna()
            return None if values.empty else [float(values.min()), float(values.max())]

        return {
            "path": str(self.path),
            "rows": len(frame),
            "by_kind": {k: int(n) for k, n in frame["kind"].value_counts().sort_index().items()},
            "avg_bits_range": span("avg_bits"),
            "fid_range": span("fid"),
            "protocol": self.protocol,
        }

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
