"""The aggregator's journal: a SQLite file that makes every step restartable.

The chain is the source of truth; the journal records what the daemon has already
read and decided so that a crash at any point (kill -9 included) neither loses an
accepted update nor counts one twice nor finalizes a round twice.

- ``meta``: the chain id, genesis hash and ModelRegistry address the journal belongs
  to, and the last block whose events were processed.
- ``commitments``: one row per ``UpdateCommitted`` event, unique by transaction hash
  and log index, with the provenance verdict.
- ``rounds``: one row per round with its phase (``collecting``, ``aggregated``,
  ``finalized``, ``done``) and, once aggregated, the result that later steps send.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ztfm_chain.exceptions import ChainMismatch

PHASES = ("collecting", "aggregated", "finalized", "done")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commitments (
    tx_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    block INTEGER NOT NULL,
    model_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    device TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    cid TEXT NOT NULL,
    sample_count INTEGER NOT NULL,
    base_model_hash TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    signer TEXT NOT NULL,
    signature TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    detail TEXT,
    PRIMARY KEY (tx_hash, log_index)
);
CREATE INDEX IF NOT EXISTS commitments_round ON commitments (model_id, round);
CREATE TABLE IF NOT EXISTS rounds (
    model_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    phase TEXT NOT NULL,
    result TEXT,
    PRIMARY KEY (model_id, round)
);
"""


@dataclass(frozen=True)
class CommitmentRow:
    """A commitment read from chain and the aggregator's verdict on it.

    ``status`` is ``pending`` (provenance passed, content not checked yet),
    ``rejected`` (with ``reason``) or ``accepted``.
    """

    tx_hash: str
    log_index: int
    block: int
    model_id: int
    round: int
    device: str
    content_hash: str
    cid: str
    sample_count: int
    base_model_hash: str
    nonce: int
    signer: str
    signature: str
    status: str
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def from_event(cls, entry: Any) -> CommitmentRow:
        """Build a pending row from a decoded ``UpdateCommitted`` event."""
        args = entry["args"]
        return cls(
            tx_hash="0x" + bytes(entry["transactionHash"]).hex(),
            log_index=int(entry["logIndex"]),
            block=int(entry["blockNumber"]),
            model_id=int(args["modelId"]),
            round=int(args["round"]),
            device=str(args["device"]),
            content_hash="0x" + bytes(args["contentHash"]).hex(),
            cid=str(args["cid"]),
            sample_count=int(args["sampleCount"]),
            base_model_hash="0x" + bytes(args["baseModelHash"]).hex(),
            nonce=int(args["nonce"]),
            signer=str(args["signer"]),
            signature="0x" + bytes(args["signature"]).hex(),
            status="pending",
        )


class Journal:
    """Durable state of one aggregator, bound to one deployment."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run statements atomically: all of them land, or none."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # --- binding and cursor ------------------------------------------------------

    def bind(self, chain_id: int, genesis_hash: str, model_registry: str) -> None:
        """Record the deployment, or raise ChainMismatch if it is another one."""
        expected = {
            "chain_id": str(chain_id),
            "genesis_hash": genesis_hash.lower(),
            "model_registry": model_registry.lower(),
        }
        with self.transaction() as db:
            for key, value in expected.items():
                row = db.execute(
                    "SELECT value FROM meta WHERE key = ?", (key,)
                ).fetchone()
                if row is None:
                    db.execute("INSERT INTO meta VALUES (?, ?)", (key, value))
                elif row[0] != value:
                    raise ChainMismatch(
                        f"journal {self.path} belongs to {key} {row[0]}, but the chain "
                        f"has {value}. Pass another file with --journal for this "
                        "deployment, or delete this one if its chain is gone for good"
                    )

    def cursor(self, default: int) -> int:
        """Return the last processed block, or ``default`` before the first run."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
        return int(row[0]) if row else default

    def set_cursor(self, db: sqlite3.Connection, block: int) -> None:
        """Record the last processed block, inside the caller's transaction."""
        db.execute(
            "INSERT INTO meta VALUES ('cursor', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(block),),
        )

    # --- commitments --------------------------------------------------------------

    def add_commitment(self, db: sqlite3.Connection, row: CommitmentRow) -> bool:
        """Insert a commitment once; return False when it was already there."""
        values = asdict(row)
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        cursor = db.execute(
            f"INSERT OR IGNORE INTO commitments ({columns}) VALUES ({marks})",
            tuple(values.values()),
        )
        return cursor.rowcount == 1

    def set_verdict(
        self,
        db: sqlite3.Connection,
        tx_hash: str,
        log_index: int,
        status: str,
        reason: str | None,
        detail: str | None,
    ) -> None:
        """Record a commitment's status and reason."""
        db.execute(
            "UPDATE commitments SET status = ?, reason = ?, detail = ? "
            "WHERE tx_hash = ? AND log_index = ?",
            (status, reason, detail, tx_hash, log_index),
        )

    def commitments(self, model_id: int, round: int) -> list[CommitmentRow]:
        """Return a round's commitments in chain order."""
        rows = self._db.execute(
            "SELECT * FROM commitments WHERE model_id = ? AND round = ? "
            "ORDER BY block, log_index",
            (model_id, round),
        ).fetchall()
        return [CommitmentRow(*row) for row in rows]

    def has_earlier_commitment(
        self, db: sqlite3.Connection, model_id: int, round: int, device: str
    ) -> bool:
        """Tell whether the device already has a commitment in the round."""
        row = db.execute(
            "SELECT 1 FROM commitments WHERE model_id = ? AND round = ? AND device = ?",
            (model_id, round, device),
        ).fetchone()
        return row is not None

    # --- rounds ---------------------------------------------------------------------

    def phase(self, model_id: int, round: int) -> str | None:
        """Return a round's phase, or None when the journal has not seen it."""
        row = self._db.execute(
            "SELECT phase FROM rounds WHERE model_id = ? AND round = ?",
            (model_id, round),
        ).fetchone()
        return str(row[0]) if row else None

    def set_phase(
        self,
        db: sqlite3.Connection,
        model_id: int,
        round: int,
        phase: str,
        result: dict[str, Any] | None = None,
    ) -> None:
        """Move a round to ``phase``, storing ``result`` when given."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        encoded = None if result is None else json.dumps(result, sort_keys=True)
        db.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, ?) ON CONFLICT(model_id, round) "
            "DO UPDATE SET phase = excluded.phase, "
            "result = COALESCE(excluded.result, rounds.result)",
            (model_id, round, phase, encoded),
        )

    def result(self, model_id: int, round: int) -> dict[str, Any] | None:
        """Return the stored aggregation result of a round."""
        row = self._db.execute(
            "SELECT result FROM rounds WHERE model_id = ? AND round = ?",
            (model_id, round),
        ).fetchone()
        if row is None or row[0] is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    def rounds_in(self, phases: tuple[str, ...]) -> list[tuple[int, int, str]]:
        """Return (model, round, phase) of every round in one of ``phases``."""
        marks = ", ".join("?" for _ in phases)
        rows = self._db.execute(
            f"SELECT model_id, round, phase FROM rounds WHERE phase IN ({marks}) "
            "ORDER BY model_id, round",
            phases,
        ).fetchall()
        return [(int(m), int(r), str(p)) for m, r, p in rows]
