"""The WAL reader returns whole commits, follows restarts and stops at damage."""
import os
import sqlite3

import pytest

from peewee_s3 import files
from peewee_s3.wal import (WAL_INDEX_NOTE_SIZE, WalPosition, parse_wal_index, read_ahead,
                           read_commits)


@pytest.fixture
def conn(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "a.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (x)")
    yield conn
    conn.close()


def wal(conn):
    return conn.execute("PRAGMA database_list").fetchone()[2] + "-wal"


@pytest.mark.parametrize("verify", [True, False])
def test_reads_every_commit_and_continues_from_its_position(conn, verify):
    for i in range(5):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    first = read_commits(wal(conn), WalPosition(), verify=verify)
    assert len(first.commits) == 6
    conn.execute("INSERT INTO t VALUES (99)")
    second = read_commits(wal(conn), first.position, verify=verify)
    assert len(second.commits) == 1 and not second.restarted
    assert second.position.frames > first.position.frames


def test_an_open_transaction_is_not_returned(conn):
    conn.execute("INSERT INTO t VALUES (1)")
    done = read_commits(wal(conn), WalPosition())
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (2)")
    assert read_commits(wal(conn), done.position).commits == []
    conn.execute("COMMIT")
    assert len(read_commits(wal(conn), done.position).commits) == 1


def test_a_restarted_wal_is_read_from_its_first_frame(conn):
    conn.execute("INSERT INTO t VALUES (1)")
    before = read_commits(wal(conn), WalPosition())
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    conn.execute("INSERT INTO t VALUES (2)")
    after = read_commits(wal(conn), before.position)
    assert after.restarted and len(after.commits) == 1
    assert after.header.checkpoint_seq == before.header.checkpoint_seq + 1


def test_a_flipped_byte_ends_the_verified_read_before_the_damage(conn):
    for i in range(3):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    path = wal(conn)
    whole = read_commits(path, WalPosition())
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    damaged = read_commits(path, WalPosition())
    assert len(damaged.commits) == len(whole.commits) - 1


def test_a_missing_wal_has_no_commits(tmp_path):
    assert read_commits(str(tmp_path / "none-wal"), WalPosition()).commits == []


def test_the_wal_index_tells_the_last_commit_frame_and_the_cycle(conn):
    conn.execute("INSERT INTO t VALUES (1)")
    read = read_commits(wal(conn), WalPosition())
    index = parse_wal_index(files.pread(wal(conn)[:-4] + "-shm", WAL_INDEX_NOTE_SIZE))
    assert index == (read.header.salts, read.position.frames)
    assert read.commits[-1].end_frame == read.position.frames


def test_a_read_ahead_is_kept_while_the_wal_stays_in_its_cycle(conn):
    start = read_commits(wal(conn), WalPosition())
    for i in range(50):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    ahead = read_ahead(wal(conn)[:-4], start.position)
    assert len(ahead.commits) == 50
    for i in range(3):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    read = read_commits(wal(conn), start.position, verify=False, ahead=ahead)
    whole = read_commits(wal(conn), start.position, verify=True)
    assert read.commits == whole.commits and len(read.commits) == 53
    assert read.position == whole.position


def test_a_read_ahead_is_dropped_when_the_wal_restarted_since(conn):
    start = read_commits(wal(conn), WalPosition())
    for i in range(50):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    ahead = read_ahead(wal(conn)[:-4], start.position)
    assert len(ahead.commits) == 50
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # someone else: the WAL starts over
    conn.execute("INSERT INTO t VALUES (1)")
    read = read_commits(wal(conn), start.position, verify=False, ahead=ahead)
    assert read.restarted and len(read.commits) == 1


def test_a_read_ahead_from_nothing_read_is_kept(conn):
    ahead = read_ahead(wal(conn)[:-4], WalPosition())
    read = read_commits(wal(conn), WalPosition(), verify=False, ahead=ahead)
    assert len(ahead.commits) == 1 and read.commits == ahead.commits
    assert read.position == read_commits(wal(conn), WalPosition()).position


def test_a_read_ahead_reads_a_restarted_wal_from_its_first_frame(conn):
    conn.execute("INSERT INTO t VALUES (1)")
    before = read_commits(wal(conn), WalPosition())
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    for i in range(20):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    ahead = read_ahead(wal(conn)[:-4], before.position)
    assert ahead is not None and len(ahead.commits) == 20 and ahead.start_frame == 0
    conn.execute("INSERT INTO t VALUES (99)")
    read = read_commits(wal(conn), before.position, verify=False, ahead=ahead)
    whole = read_commits(wal(conn), before.position, verify=True)
    assert read.restarted and read.commits == whole.commits and len(read.commits) == 21
    assert read.position == whole.position
