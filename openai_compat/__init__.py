"""OpenAI semantics shared by every service that answers helios.v1.InferenceService.

The worker (warm requests, straight from Envoy) and the proxy (cold requests) both serve
the same contract; what a request means, what it may contain and what its answer looks
like lives here once. This package imports only runtime/ and the generated contracts,
never a service package.
"""
