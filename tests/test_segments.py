"""Segments round-trip, and any damage is a ReplicaCorruptError naming the object."""
import pytest

from peewee_s3.errors import ReplicaCorruptError
from peewee_s3.segments import CommitRecord, Segment

PAGE = 512


def segment():
    commits = (CommitRecord(1.5, 3, {1: b"a" * PAGE, 3: b"c" * PAGE}),
               CommitRecord(2.5, 2, {2: b"b" * PAGE}))
    return Segment("gen", 7, 2, PAGE, commits)


def test_a_segment_round_trips():
    assert Segment.decode(segment().encode(), "k") == segment()


def test_rewritten_pages_compress_across_commits():
    page = bytes(range(256)) * (4096 // 256)
    commits = tuple(CommitRecord(float(i), 1, {1: page[:-1] + bytes([i])}) for i in range(50))
    assert len(Segment("g", 1, 1, 4096, commits).encode()) < 4096 * 2


@pytest.mark.parametrize("position", [0, 12, 40, -40, -1])
def test_a_flipped_byte_anywhere_is_detected(position):
    data = bytearray(segment().encode())
    data[position] ^= 0x01
    with pytest.raises(ReplicaCorruptError, match="segment k is corrupt"):
        Segment.decode(bytes(data), "k")


def test_a_truncated_segment_is_detected():
    with pytest.raises(ReplicaCorruptError):
        Segment.decode(segment().encode()[:-10], "k")


def test_applying_commits_writes_pages_and_cuts_the_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * PAGE * 4)
    with open(path, "r+b") as f:
        for commit in segment().commits:
            commit.apply_to(f, PAGE)
    assert path.read_bytes() == b"a" * PAGE + b"b" * PAGE


def wal_frames(tmp_path, rows):
    """The WAL frames of `rows` single-row commits, as the replicator reads them."""
    import sqlite3
    from peewee_s3.wal import WalPosition, read_commits
    conn = sqlite3.connect(str(tmp_path / "w.db"), isolation_level=None)
    conn.execute("PRAGMA page_size=512")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    start = read_commits(str(tmp_path / "w.db-wal"), WalPosition())
    for i in range(rows):
        conn.execute("INSERT INTO t VALUES (?)", (f"row {i}" * 20,))
    read = read_commits(str(tmp_path / "w.db-wal"), start.position)
    conn.close()
    return read


def test_a_segment_of_wal_frames_decodes_to_the_commits_read(tmp_path):
    from peewee_s3.segments import FrameSegment
    read = wal_frames(tmp_path, 30)
    times = tuple(100.0 + i / 3 for i in range(len(read.ends)))
    shipped = FrameSegment("gen", 3, 1, 512, tuple(read.chunks), read.start_frame,
                           tuple(read.ends), times)
    decoded = Segment.decode(shipped.encode(), "k")
    assert decoded.commits == shipped.commits
    assert [c.time for c in decoded.commits] == list(times)
    assert [(c.pages, c.db_pages) for c in decoded.commits] == \
        [(c.pages, c.db_pages) for c in read.commits]


def test_a_frames_segment_whose_header_lies_about_its_commits_is_corrupt(tmp_path):
    from peewee_s3.segments import FrameSegment
    read = wal_frames(tmp_path, 3)
    ends = tuple(read.ends)
    # Two commits made one (the first then does not end on a commit frame), one commit
    # dropped (the frames no longer fill the body), and ends out of order.
    for bad in (ends[1:], ends[:-1], (ends[1], ends[0]) + ends[2:]):
        times = tuple(float(i) for i in range(len(bad)))
        data = FrameSegment("gen", 1, 1, 512, tuple(read.chunks), read.start_frame, bad,
                            times).encode()
        with pytest.raises(ReplicaCorruptError, match="segment k is corrupt"):
            Segment.decode(data, "k")
