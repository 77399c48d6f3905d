"""The registry process. Its contract (helios.v1.RegistryService) is served as UNIMPLEMENTED until
the model registry issue (#5) lands; health and reflection already work."""

from __future__ import annotations

from helios.v1 import registry_pb2

from runtime.unimplemented import serve_unimplemented

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]


def main() -> None:
    serve_unimplemented(SERVICE, "registry", "it arrives with the model registry issue (#5)")


if __name__ == "__main__":
    main()
