"""cli.progress: progress bars for uploads and downloads, on stderr when it is a terminal.

Display only: a bar never changes what is transferred, and off a terminal nothing is drawn.
"""
from __future__ import annotations

import sys
from typing import Any, Optional

from tqdm import tqdm

from ..layout import Layout
from ..snapshots import read_meta
from ..storage import Storage


def progress_bar(total: Optional[int], description: str) -> tqdm:
    """Bytes, rate and ETA on stderr when it is a terminal; silent otherwise."""
    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


class ShowingDownloads:
    """A Storage whose snapshot downloads draw a progress bar: `restore_to` takes no callback,
    so this wraps the storage it is given. Everything else passes straight through."""

    def __init__(self, storage: Storage, layout: Layout) -> None:
        self._storage, self._layout = storage, layout

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def download(self, key: str, fileobj, *, progress=None) -> int:
        total = None
        generation = self._layout.generation_of(key)
        if sys.stderr.isatty() and generation and key == self._layout.snapshot(generation):
            total = read_meta(self._storage, self._layout, generation).stored_size
        with progress_bar(total, key.rsplit("/", 1)[-1]) as bar:
            def report(nbytes: int) -> None:
                bar.update(nbytes)
                if progress:
                    progress(nbytes)
            return self._storage.download(key, fileobj, progress=report)
