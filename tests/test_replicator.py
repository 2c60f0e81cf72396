"""The replicator ships pages, not databases: bytes uploaded follow the pages changed."""
import os
import time

from .helpers import NAME, Note, make_db, stored_keys


def test_ten_thousand_small_commits_upload_about_the_pages_they_changed(tmp_path, capsys):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.2)
    db.create_tables([Note])
    db.snapshot()
    for i in range(10_000):
        Note.create(body=f"note number {i}")
    db.sync()
    generation = db.status()["generation"]
    database_size = os.path.getsize(tmp_path / "a.db") + os.path.getsize(tmp_path / "a.db-wal")
    segments = {k: v for k, v in stored_keys(storage_kwargs).items()
                if k.startswith(f"{NAME}/generations/{generation}/wal/")}
    uploaded = sum(segments.values())
    with capsys.disabled():
        print(f"\n10,000 commits in async mode: {len(segments)} segments, {uploaded:,} bytes "
              f"uploaded ({uploaded / 10_000:.0f} bytes/commit); database {database_size:,} bytes")
    # Shipping the whole database on every commit would be database_size * 10,000 bytes.
    assert uploaded < database_size * 5
    assert uploaded / 10_000 < 1024
    db.shutdown()


def test_segments_outweighing_the_snapshot_start_a_new_generation(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.05)
    db.create_tables([Note])
    first = db.snapshot()
    for i in range(2500):                # 10 MB of random hex: over 4 MiB even compressed
        Note.create(body=os.urandom(2000).hex())
    db.sync()
    deadline = time.monotonic() + 10
    while db.status()["generation"] == first and time.monotonic() < deadline:
        Note.create(body="tick")
        time.sleep(0.1)
    assert db.status()["generation"] != first
    db.shutdown()


def test_the_replicators_own_checkpoints_keep_one_generation_under_bursts(tmp_path):
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=0.05, checkpoint_frames=50)
    db.create_tables([Note])
    first = db.status()["generation"]
    for i in range(3000):               # many bursts of > checkpoint_frames between shipments
        Note.create(body=str(i))
    db.sync()
    assert db.status()["generation"] == first
    assert db.status()["segments_uploaded"] > 1
    db.shutdown()


def test_commits_made_while_the_replicator_checkpoints_are_carried_into_the_next_segment(
        tmp_path, monkeypatch):
    """The checkpoint after a long shipment runs mostly without SQLite's write lock; a commit
    that lands in between is read under the lock, carried, and shipped next — same
    generation, nothing lost, and the WAL started over."""
    import sqlite3
    from peewee_s3.localfile import LocalFile
    from peewee_s3.restore import restore
    storage_kwargs = {"storage": f"file://{tmp_path}/store"}
    db = make_db(tmp_path / "a.db", storage_kwargs, sync_interval=30, checkpoint_frames=20)
    db.create_tables([Note])
    first = db.status()["generation"]
    neighbour = sqlite3.connect(str(tmp_path / "a.db"), isolation_level=None,
                                check_same_thread=False)
    landed = []
    checkpoint_to_pin = LocalFile.checkpoint_to_pin

    def with_a_commit_in_between(local):
        checkpoint_to_pin(local)
        if len(landed) < 3:
            landed.append(f"between {len(landed)}")
            neighbour.execute("INSERT INTO note (body) VALUES (?)", (landed[-1],))

    monkeypatch.setattr(LocalFile, "checkpoint_to_pin", with_a_commit_in_between)
    for round in range(3):
        for i in range(30):
            Note.create(body=f"{round}.{i}")
        db.sync()
    wal_frames = os.path.getsize(tmp_path / "a.db-wal") // 4096
    db.sync()
    assert len(landed) == 3 and db.status()["generation"] == first
    assert wal_frames < 60          # the WAL started over: 3 x 30 commits never piled up
    neighbour.close()
    db.shutdown()
    restore(database_name=NAME, target=str(tmp_path / "out.db"), **storage_kwargs)
    got = {r[0] for r in sqlite3.connect(str(tmp_path / "out.db")).execute("SELECT body FROM note")}
    assert set(landed) <= got and len(got) == 90 + 3
