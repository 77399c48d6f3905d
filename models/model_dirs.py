"""Built model directories put in place atomically (the default models of `helios up`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Written last into a built directory: its presence (with the right stamp) means complete.
COMPLETE_MARKER = ".helios-complete"


def installed_package_file(package: str, name: str) -> Path | None:
    """The file ``name`` inside the installed package ``package`` (the source a default
    model is built from), found without importing the package; None when either is
    missing."""
    spec = importlib.util.find_spec(package)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / name
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class BuiltDir:
    """A model directory built once: the stamp its completion marker holds (a new stamp
    rebuilds it) and the files a complete one has."""

    out_dir: Path
    stamp: str
    required: Sequence[str]

    def is_complete(self, directory: Path | None = None) -> bool:
        """``directory`` (default: ``out_dir``) holds a finished build of this stamp."""
        directory = directory or self.out_dir
        try:
            if (directory / COMPLETE_MARKER).read_text().strip() != self.stamp:
                return False
        except OSError:
            return False
        return all((directory / f).is_file() for f in self.required)

    def build(self, write: Callable[[Path], None], *, what: str) -> None:
        """``write(tmp_dir)`` into a temporary directory beside ``out_dir``, then the
        completion marker (fsynced), then the whole directory into place atomically."""
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(
            tempfile.mkdtemp(prefix=f".{self.out_dir.name}.{what}-", dir=self.out_dir.parent)
        )
        try:
            write(tmp_dir)
            with (tmp_dir / COMPLETE_MARKER).open("w") as marker:
                marker.write(self.stamp + "\n")
                marker.flush()
                os.fsync(marker.fileno())
            move_into_place(tmp_dir, self.out_dir, self.is_complete)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)


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
