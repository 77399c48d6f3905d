"""The registry's settings: its flags and ``HELIOS_REGISTRY_*`` variables as one typed,
frozen object (bound by runtime/settings.py). S3 credentials come from the standard AWS
chain (``AWS_ACCESS_KEY_ID``..., profiles, instance roles), Azure's from the variable
``--azure-connection-string-env`` names, the Hub token from ``--hf-token-env``'s."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from registry.blobs import DEFAULT_CHUNK_SIZE
from registry.cloud import DEFAULT_PART_SIZE
from registry.upload import DEFAULT_MAX_UPLOAD_BYTES
from runtime.config import helios_home
from runtime.settings import Settings, must_be_directory, setting

BACKENDS = ("local", "s3", "azure")
S3 = "s3 blob backend"  # argument groups in --help
AZURE = "azure blob backend"


def default_data_dir() -> Path:
    return helios_home() / "registry"


def parse_size(text: str) -> int:
    """A byte count: ``16777216``, ``16MiB``, ``8M``, ``512KiB``."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if value and value[-1] in units:
            return int(value[:-1]) * units[value[-1]]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte size: {text!r}") from None


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@dataclasses.dataclass(frozen=True)
class RegistrySettings(Settings):
    """Everything ``python -m registry.server`` is told (besides the shared server flags)."""

    data_dir: Path = setting(
        default_factory=default_data_dir,
        help="SQLite metadata and (local backend) blobs; default $HELIOS_HOME/registry",
    )
    blob_backend: str = setting(
        "local",
        choices=BACKENDS,
        help="where blob bytes live: local (under --data-dir/blobs), s3 or azure",
    )
    s3_bucket: str = setting("", group=S3)
    s3_prefix: str = setting(
        "", group=S3, help="key prefix; blobs live at <prefix>/blobs/sha256/<aa>/<sha256>"
    )
    s3_endpoint_url: str | None = setting(
        None, group=S3, help="S3-compatible endpoint (default: AWS, or $AWS_ENDPOINT_URL_S3)"
    )
    s3_region: str | None = setting(None, group=S3)
    s3_addressing_style: str = setting("auto", group=S3, choices=("auto", "path", "virtual"))
    s3_part_size: int = setting(
        DEFAULT_PART_SIZE,
        group=S3,
        parse=parse_size,
        help="multipart part size (>= 5MiB); blobs up to one part go up in one PUT",
    )
    s3_create_bucket: bool = setting(
        False,
        group=S3,
        help="create the bucket when it does not exist (emulators, development)",
    )
    azure_container: str = setting("", group=AZURE)
    azure_prefix: str = setting(
        "", group=AZURE, help="name prefix; blobs live at <prefix>/blobs/sha256/<aa>/<sha256>"
    )
    azure_connection_string_env: str = setting(
        "AZURE_STORAGE_CONNECTION_STRING",
        group=AZURE,
        help="name of the environment variable holding the storage connection string",
    )
    azure_block_size: int = setting(
        DEFAULT_PART_SIZE, group=AZURE, parse=parse_size, help="bytes per staged block"
    )
    azure_create_container: bool = setting(
        False,
        group=AZURE,
        help="create the container when it does not exist (Azurite, development)",
    )
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, ge=1, help="bytes per hashed chunk in manifests")
    import_root: tuple[Path, ...] = setting(
        (),
        env="import_roots",
        separator=os.pathsep,
        metavar="DIR",
        check=must_be_directory,
        help="a directory ImportModel may import from, with everything below it (repeatable;"
        f" env HELIOS_REGISTRY_IMPORT_ROOTS, {os.pathsep!r}-separated). Default: none, no"
        " server directory is importable over the network (clients use UploadModel)",
    )
    max_upload_bytes: int = setting(
        DEFAULT_MAX_UPLOAD_BYTES,
        ge=0,
        parse=parse_size,
        help="the most bytes UploadModel accepts, over the uploads running at once"
        " (e.g. 64GiB, the default)",
    )
    # The Hub's own variables, not HELIOS_*: what the huggingface_hub tools read too.
    hf_endpoint: str = setting(
        default_factory=_hf_endpoint,
        from_env=False,
        help="Hugging Face Hub endpoint (default $HF_ENDPOINT)",
    )
    hf_token_env: str = setting(
        "HF_TOKEN",
        from_env=False,
        help="name of the environment variable holding the Hub token",
    )
