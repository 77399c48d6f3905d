"""The storaged process. Its contract (helios.v1.StorageService) is served as UNIMPLEMENTED until
the storaged issue (#6) lands; health and reflection already work."""

from __future__ import annotations

from helios.v1 import storage_pb2

from runtime.unimplemented import serve_unimplemented

SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]


def main() -> None:
    serve_unimplemented(SERVICE, "storaged", "it arrives with the storaged issue (#6)")


if __name__ == "__main__":
    main()
