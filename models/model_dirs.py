"""Built model directories put in place atomically (the default models of `helios up`)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def move_into_place(tmp_dir: Path, out_dir: Path, is_complete: Callable[[Path], bool]) -> None:
    """Rename ``tmp_dir`` to ``out_dir``; a complete build by a concurrent builder wins,
    anything else there (a partial or stale directory) is moved aside first."""
    for _ in range(3):
        try:
            os.rename(tmp_dir, out_dir)
            return
        except OSError:
            if not out_dir.exists():
                raise
        # Something is there already. A concurrent builder may just have finished the
        # same model: keep theirs. Otherwise it is stale (other parameters, or a
        # directory left half-written by hand): move it aside and retry the rename,
        # so readers only ever see a complete model or none.
        if is_complete(out_dir):
            return
        trash = out_dir.parent / f".{out_dir.name}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(out_dir, trash)
        except FileNotFoundError:
            continue  # someone else moved it away meanwhile; just retry
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)
    raise OSError(f"could not move the built model into {out_dir}")
