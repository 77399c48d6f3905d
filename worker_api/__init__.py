"""The caller's side of helios.v1.WorkerService, shared by every service that calls a
worker: the proxy (cold requests, control) and a decode-role worker, which runs its
requests' prefills on prefill-role peers (disaggregated serving with no proxy in the
path).

:mod:`worker_api.disagg` drives one request through a prefill worker and a decode worker
(domain, no protobuf); :mod:`worker_api.wire` converts between the domain values and
WorkerService's messages. Like ``openai_compat``, this package imports only runtime/,
openai_compat/ and the generated contracts, never a service package.
"""
