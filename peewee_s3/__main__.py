"""`python -m peewee_s3`: the same command as the `peewee-s3` script."""
from .cli import run

run()
