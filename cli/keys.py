"""The mesh's admin key: what `helios up` gives Envoy and what the CLI sends.

The front door never opens the admin API without an admin key (edge/access.py EdgeAccess).
`helios up` takes one from ``--admin-key`` or ``HELIOS_ADMIN_KEY``; otherwise it uses the
key in ``$HELIOS_HOME/admin-key``, making a random one there the first time (mode 0600,
written to a temporary file and renamed), so `helios status` on the same machine finds it
and scripts can read it.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from runtime.config import helios_home

ADMIN_KEY_ENV = "HELIOS_ADMIN_KEY"
ADMIN_KEY_FILE = "admin-key"


def admin_key_path() -> Path:
    return helios_home() / ADMIN_KEY_FILE


def read_admin_key() -> str | None:
    """The admin key from the environment, else from the key file; None if neither."""
    key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if key:
        return key
    try:
        return admin_key_path().read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def ensure_admin_key() -> str:
    """The admin key to run the mesh with (see the module docstring)."""
    existing = read_admin_key()
    if existing:
        return existing
    path = admin_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "helios-admin-" + secrets.token_urlsafe(24)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".admin-key.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(key + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return key


def bearer(key: str | None) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying ``key`` the way the front door reads it."""
    return (("authorization", f"Bearer {key}"),) if key else ()
