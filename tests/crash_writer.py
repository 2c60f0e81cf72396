"""A writer process for the crash tests: inserts numbered rows, printing each acknowledged id.

Run as `python crash_writer.py PATH MODE STORAGE_KWARGS_JSON [VARIANT]`; it never stops by
itself. VARIANT is one of:
  plain        rows only (the default);
  snapshots    the database first gets PAD_BYTES of other data, so that a snapshot takes a
               while, and a thread takes snapshots one after another, printing
               `snapshot started` and `snapshot stored` around each;
  checkpoints  checkpoint_frames=CHECKPOINT_FRAMES: the WAL is checkpointed and starts over
               every few commits.
"""
import json
import sys
import threading
import time

import peewee

from peewee_s3 import S3SqliteDatabase

PAD_BYTES = 4 << 20
PAD_ROW = 4096
SNAPSHOT_PAUSE = 0.1     # seconds between two snapshots, so that rows go on being shipped
CHECKPOINT_FRAMES = 4
_say_lock = threading.Lock()  # one line at a time on stdout, from either thread


def say(line) -> None:
    with _say_lock:
        sys.stdout.write(f"{line}\n")
        sys.stdout.flush()


def main() -> None:
    path, mode, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    variant = sys.argv[4] if len(sys.argv) > 4 else "plain"
    if variant == "checkpoints":
        kwargs["checkpoint_frames"] = CHECKPOINT_FRAMES
    db = S3SqliteDatabase(path, database_name="crash", sync_mode=mode, sync_interval=0.05,
                          **kwargs)

    class Row(peewee.Model):
        n = peewee.IntegerField()

        class Meta:
            database = db

    class Pad(peewee.Model):
        data = peewee.BlobField()

        class Meta:
            database = db

    db.create_tables([Row, Pad])
    if variant == "snapshots":
        with db.atomic():
            for i in range(PAD_BYTES // PAD_ROW):
                Pad.create(data=i.to_bytes(4, "big") * (PAD_ROW // 4))
        db.snapshot()
        threading.Thread(target=snapshot_forever, args=(db,), daemon=True).start()
    say("ready")
    insert_forever(db, Row)


def snapshot_forever(db) -> None:
    while True:
        say("snapshot started")
        db.snapshot()
        say("snapshot stored")
        time.sleep(SNAPSHOT_PAUSE)


def insert_forever(db, Row) -> None:
    n = 0
    while True:
        n += 1
        if n % 3:
            Row.create(n=n)
        else:
            with db.atomic():
                Row.create(n=n)
        say(n)


if __name__ == "__main__":
    main()
