"""A writer process for the crash tests: inserts numbered rows, printing each acknowledged id.

Run as `python crash_writer.py PATH MODE STORAGE_KWARGS_JSON`; it never stops by itself.
"""
import json
import sys

import peewee

from peewee_s3 import S3SqliteDatabase


def main() -> None:
    path, mode, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    db = S3SqliteDatabase(path, database_name="crash", sync_mode=mode, sync_interval=0.05,
                          **kwargs)

    class Row(peewee.Model):
        n = peewee.IntegerField()

        class Meta:
            database = db

    db.create_tables([Row])
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        if n % 3:
            Row.create(n=n)
        else:
            with db.atomic():
                Row.create(n=n)
        print(n, flush=True)


if __name__ == "__main__":
    main()
