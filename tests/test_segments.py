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
