"""SQLite as the store and the local-feature store use it: one connection per store directory (WAL,
fully synchronous), the directory's writer lock, explicit transactions, and ``IN (...)`` chunks."""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def chunks(seq: Sequence, n: int = 900) -> Iterator[Sequence]:
    """``seq`` in slices of at most ``n``: SQLite caps the parameters of one statement."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL journal, fsync on commit."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


@contextmanager
def lock(root: Path) -> Iterator[None]:
    """The writer lock of the directory ``root`` (``root/.lock``): one writer at a time, across processes."""
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
