"""Observability shared by both planes: Prometheus metrics, OpenTelemetry traces, JSON logs.

* :mod:`gateway.observability.metrics`: each plane's metrics in its own registry;
* :mod:`gateway.observability.asgi`: ``GET /metrics`` and the per-request observer
  (metrics, access line, SERVER span);
* :mod:`gateway.observability.tracing`: spans and W3C trace-context propagation (off
  unless an OTLP endpoint is configured);
* :mod:`gateway.observability.context`: what one request established (action, decision id);
* :mod:`gateway.observability.logjson`: ``GATEWAY_LOG_FORMAT=json``.

A neutral layer (``pyproject.toml`` import contracts): both planes and the policy/MCP layers
may import it; it imports only the configuration, the HTTP client port and the log filter.
Reference: ``docs/operations.md`` "Metrics and traces".
"""
