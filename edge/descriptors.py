"""The descriptor set the transcoder reads: ``proto/helios/v1`` compiled with its imports
(grpcio-tools, the ``edge`` extra)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"


def _well_known_proto_root() -> Path:
    import grpc_tools

    return Path(grpc_tools.__file__).resolve().parent / "_proto"


def _googleapis_rpc_root() -> Path | None:
    """The directory holding google/rpc/*.proto from googleapis-common-protos, if shipped."""
    try:
        import google.rpc as rpc
    except ImportError:
        return None
    for entry in rpc.__path__:
        if (Path(entry) / "status.proto").is_file():
            return Path(entry).parent.parent
    return None


def build_descriptor_set(out_path: Path) -> Path:
    """Compile ``proto/helios/v1/*.proto`` into a FileDescriptorSet at ``out_path``.

    The set includes every import (google/api, google/protobuf) and source info, plus
    google/rpc/status.proto and error_details.proto when available so that the transcoder
    can print ``grpc-status-details-bin`` details. Written to a temporary file first and
    renamed, so a reader never sees a partial file. Returns ``out_path``.
    """
    from grpc_tools import protoc

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sources = sorted(
        p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "helios" / "v1").glob("*.proto")
    )
    if not sources:
        raise FileNotFoundError(f"no .proto files under {PROTO_ROOT / 'helios' / 'v1'}")
    includes = [PROTO_ROOT, _well_known_proto_root()]
    rpc_root = _googleapis_rpc_root()
    if rpc_root is not None:
        includes.append(rpc_root)
        sources += ["google/rpc/status.proto", "google/rpc/error_details.proto"]

    fd, tmp_name = tempfile.mkstemp(prefix=out_path.name + ".", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        args = [
            "grpc_tools.protoc",
            *(f"--proto_path={p}" for p in includes),
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={tmp}",
            *sources,
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}: {' '.join(args)}")
        tmp.chmod(0o644)  # mkstemp made it private
        tmp.replace(out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
