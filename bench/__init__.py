"""bench: peewee-s3 measured side by side with plain SQLite, the seed's way and Litestream.

A script, not a test: `python -m bench --quick` (or `python bench/run.py`). See bench/README.md.
"""
