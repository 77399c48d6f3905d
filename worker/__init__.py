"""Helios worker: the inference engine behind a gRPC contract."""
