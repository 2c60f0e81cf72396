"""The replicated file and its neighbours: SQLite's locks hold, and nobody's checkpoint loses a
commit (localfile.py: no descriptor opened and closed, a read transaction pinned at the
shipped position)."""
import subprocess
import sys
import threading
import time

from peewee_s3 import restore

from .helpers import NAME, Note, make_db, rows_in_file


def neighbour(path, *statements, timeout=0.2):
    """Run SQL in another process on the same file; returns what it printed (or the error)."""
    script = (
        "import sqlite3, sys\n"
        f"conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout={timeout})\n"
        "try:\n"
        "    for sql in sys.argv[2:]:\n"
        "        print(conn.execute(sql).fetchall())\n"
        "except sqlite3.Error as exc:\n"
        "    print('error:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path), *statements],
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def file_storage(tmp_path):
    return {"storage": f"file://{tmp_path}/store"}


def test_a_neighbour_cannot_take_the_write_lock_the_app_holds_while_it_replicates(tmp_path):
    db = make_db(tmp_path / "a.db", file_storage(tmp_path), sync_interval=0.05)
    db.create_tables([Note])
    Note.create(body="before")
    db.sync()
    with db.atomic():
        Note.create(body="in a transaction")
        shipping = threading.Thread(target=db.sync)   # waits for the app's transaction
        shipping.start()
        time.sleep(0.5)
        answer = neighbour(tmp_path / "a.db", "BEGIN IMMEDIATE", "INSERT INTO note (body) "
                           "VALUES ('intruder')", "COMMIT")
        assert "database is locked" in answer
    shipping.join()
    assert sorted(n.body for n in Note.select()) == ["before", "in a transaction"]
    db.shutdown()


def test_a_neighbours_truncate_before_the_first_segment_loses_nothing_at_shutdown(tmp_path):
    storage = file_storage(tmp_path)
    db = make_db(tmp_path / "a.db", storage, sync_interval=3600)
    raw = db.connection()      # raw sqlite3: no commit hook, nothing shipped before the truncate
    raw.execute("CREATE TABLE note (id INTEGER PRIMARY KEY, body TEXT)")
    raw.executemany("INSERT INTO note (body) VALUES (?)", [(f"n{i:04}",) for i in range(2000)])
    neighbour(tmp_path / "a.db", "PRAGMA wal_checkpoint(TRUNCATE)")
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage)
    assert len(rows_in_file(tmp_path / "r.db")) == 2000

    again = make_db(tmp_path / "a.db", storage)      # carries on with the whole file
    Note.create(body="later")
    again.shutdown()
    restore(target=str(tmp_path / "r2.db"), database_name=NAME, **storage)
    assert len(rows_in_file(tmp_path / "r2.db")) == 2001


def test_a_truncate_from_another_thread_of_the_app_loses_no_acknowledged_commit(tmp_path):
    storage = file_storage(tmp_path)
    db = make_db(tmp_path / "a.db", storage, sync_interval=3600)
    db.create_tables([Note])
    for i in range(50):
        Note.create(body=f"n{i:02}")
    other = threading.Thread(target=lambda: db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)"))
    other.start()
    other.join()
    db.sync()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage)
    assert len(rows_in_file(tmp_path / "r.db")) == 50
    db.shutdown()


def test_a_point_in_time_between_a_neighbours_checkpoint_and_a_sync_has_the_commit(tmp_path):
    storage = file_storage(tmp_path)
    db = make_db(tmp_path / "a.db", storage, sync_interval=3600)
    db.create_tables([Note])
    db.sync()
    time.sleep(0.3)             # the replicator is idle now, for sync_interval
    Note.create(body="c1")
    c1_returned = time.time()
    neighbour(tmp_path / "a.db", "PRAGMA wal_checkpoint(TRUNCATE)")
    time.sleep(0.5)
    Note.create(body="c2")
    db.sync()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, timestamp=c1_returned + 0.2,
            **storage)
    assert rows_in_file(tmp_path / "r.db") == ["c1"]
    db.shutdown()


def test_wal_restarts_by_any_of_the_apps_connections_start_no_generation(tmp_path):
    storage = file_storage(tmp_path)
    db = make_db(tmp_path / "a.db", storage, sync_interval=0.01, checkpoint_frames=8)
    db.create_tables([Note])
    generation = db.status()["generation"]

    def write(worker):
        for i in range(150):
            Note.create(body=f"{worker}-{i:03}")
            if i % 10 == 0:
                time.sleep(0.03)                     # let the replicator ship and checkpoint
        db.close()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.sync()
    assert db.status()["generation"] == generation
    db.shutdown()
    restore(target=str(tmp_path / "r.db"), database_name=NAME, **storage)
    assert len(rows_in_file(tmp_path / "r.db")) == 450
