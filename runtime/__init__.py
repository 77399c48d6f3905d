"""Helios shared runtime: what every Helios gRPC server does the same way."""
