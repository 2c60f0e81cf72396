"""rows: the row every workload commits, in a module of its own so that bench/child.py can
use it without importing the rest of the bench (boto3) into the process it measures."""
from __future__ import annotations

import random
import string

import peewee


class Item(peewee.Model):
    """The row every workload commits: about 150 bytes, no secondary index (one page a commit)."""

    name = peewee.CharField()
    value = peewee.IntegerField()
    payload = peewee.TextField()

    class Meta:
        table_name = "item"


_ALPHABET = string.ascii_letters + string.digits


def insert_one() -> None:
    Item.create(name="".join(random.choices(_ALPHABET, k=16)), value=random.randrange(10**9),
                payload="".join(random.choices(_ALPHABET, k=120)))
