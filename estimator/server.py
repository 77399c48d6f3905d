"""The estimator process. Its contract (helios.v1.EstimatorService) is served as UNIMPLEMENTED until
the memory estimator issue (#4) lands; health and reflection already work."""

from __future__ import annotations

from helios.v1 import estimator_pb2

from runtime.unimplemented import serve_unimplemented

SERVICE = estimator_pb2.DESCRIPTOR.services_by_name["EstimatorService"]


def main() -> None:
    serve_unimplemented(SERVICE, "estimator", "it arrives with the memory estimator issue (#4)")


if __name__ == "__main__":
    main()
