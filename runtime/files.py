"""Writing a file so that a reader sees the old whole or the new whole, never a part."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, tmp_prefix: str | None = None) -> Path:
    """Write ``data`` as indented JSON at ``path`` (its folder made if missing): a temp file
    beside it (named ``tmp_prefix``..., by default ``<name>.``...), fsynced, renamed over
    ``path``; the temp file is removed if anything fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = tmp_prefix if tmp_prefix is not None else path.name + "."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
