import sqlite3

import pytest

from landmark.index.sqlite import chunks, connect, lock, transaction


def test_a_transaction_commits_or_rolls_back_whole(tmp_path):
    conn = connect(tmp_path / "x.sqlite")
    conn.execute("CREATE TABLE t (v INTEGER)")
    with transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("killed half-way")
    assert [r[0] for r in conn.execute("SELECT v FROM t")] == [1]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_writer_lock_is_one_file_and_chunks_cover_everything(tmp_path):
    with lock(tmp_path):
        assert (tmp_path / ".lock").exists()
    assert [list(c) for c in chunks(list(range(5)), 2)] == [[0, 1], [2, 3], [4]]
    assert isinstance(connect(tmp_path / "y.sqlite"), sqlite3.Connection)
