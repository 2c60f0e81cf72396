"""A worker process of a web app, for the many-processes tests: inserts rows tagged with its pid
into a shared file, printing each acknowledged one, until a stop file appears; then shuts down.

Run as `python host_worker.py PATH MODE STORAGE_KWARGS_JSON STOP_FILE`. Prints `ready ROLE`
first, then one `TAG` per acknowledged row, `error TYPE MESSAGE` for a write that raised, and
`done` after its shutdown.
"""
import json
import os
import sys
import time

import peewee

from peewee_s3 import S3SqliteDatabase


def main() -> None:
    path, mode, kwargs, stop = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    db = S3SqliteDatabase(path, database_name="hosts", sync_mode=mode, sync_interval=0.1,
                          **kwargs)

    class Row(peewee.Model):
        tag = peewee.TextField()

        class Meta:
            database = db

    db.connect()
    db.create_tables([Row])
    print("ready", db.status()["role"], flush=True)
    n = 0
    while not os.path.exists(stop):
        n += 1
        tag = f"{os.getpid()}-{n:05}"
        try:
            Row.create(tag=tag)
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            print("error", type(exc).__name__, str(exc).replace("\n", " "), flush=True)
            time.sleep(0.05)
            continue
        print(tag, flush=True)
        time.sleep(0.002)
    db.close()
    db.shutdown()
    print("done", flush=True)


if __name__ == "__main__":
    main()
