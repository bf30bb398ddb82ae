"""The gateway's routers: inference (/reconstruct, /encode) and probes (/healthz, /readyz, /metrics, /v1/overhead)."""
