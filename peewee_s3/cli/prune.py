"""cli.prune: `peewee-s3 prune`, deleting old generations by the retention policy.

The policy and the deleting are `peewee_s3.retention`'s; this prints what went (or, with
--dry-run, what would go) and what is kept.
"""
from __future__ import annotations

import argparse

from ..retention import prune, stored_generations
from .generations import current_id
from .options import StoredDatabase
from .output import byte_size, counted, when


def cmd_prune(args: argparse.Namespace, db: StoredDatabase) -> int:
    pruned = prune(db.storage, db.layout, keep_generations=args.keep_generations,
                   max_age=args.max_age, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for g in pruned:
        print(f"{verb} {g.generation}  created {when(g.created_at)}  "
              f"{counted(g.objects, 'object')}, "
              f"{byte_size(g.size)}  ({g.reason})")
    gone = {g.generation for g in pruned}
    kept = [g for g in stored_generations(db.storage, db.layout) if g.id not in gone]
    summary = (f"{counted(len(pruned), 'generation')} "
               f"{'would be deleted' if args.dry_run else 'deleted'}" if pruned
               else "nothing to prune")
    current = current_id(db)
    print(f"{summary}; {len(kept)} kept" + (f" (current {current})" if current else ""))
    return 0
