"""Prometheus metrics of this process (served by the internal listener).

Each gateway process is its own scrape target (one INTERNAL_PORT per process;
see README "Several processes per VM"), so figures never mix processes.
"""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from functools import lru_cache

import tornado
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from tornado_gateway import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "gateway_http_requests_total", "HTTP requests answered", ["route", "method", "status"],
    registry=REGISTRY)
HTTP_LATENCY = Histogram(
    "gateway_http_request_duration_seconds", "HTTP request duration", ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY)
UPSTREAM_LATENCY = Histogram(
    "gateway_upstream_duration_seconds", "Time to upstream response headers", ["upstream"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY)
UPSTREAM_ERRORS = Counter(
    "gateway_upstream_errors_total", "Upstream failures", ["upstream", "kind"], registry=REGISTRY)
CIRCUIT_OPEN = Gauge(
    "gateway_circuit_open", "1 while an upstream's circuit breaker is open", ["upstream"],
    registry=REGISTRY)
OPEN_SOCKETS = Gauge("gateway_open_sockets", "Connected Socket.IO clients", registry=REGISTRY)
EVENTS_IN = Counter("gateway_events_in_total", "Events received", ["event", "source"],
                    registry=REGISTRY)
EVENTS_OUT = Counter("gateway_events_out_total", "Events emitted to clients", ["event"],
                     registry=REGISTRY)
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests or events refused by a limit",
                       ["scope"], registry=REGISTRY)
REDIS_RECONNECTS = Counter("gateway_redis_reconnects_total", "Times Redis came back after a loss",
                           registry=REGISTRY)
RATE_LIMIT_LOCAL = Gauge("gateway_rate_limit_local_fallback",
                         "1 while rate limits are decided per node because Redis is unreachable",
                         registry=REGISTRY)
EVENTS_REJECTED = Counter("gateway_events_rejected_total", "Ingress events refused as invalid",
                          ["source"], registry=REGISTRY)
REVOCATIONS = Counter("gateway_revocations_total", "session:revoke events applied", ["kind"],
                      registry=REGISTRY)
# process_* (CPU, resident memory, open file descriptors, start time) of this process.
ProcessCollector(registry=REGISTRY)
BUILD_INFO = Gauge("gateway_build_info", "Always 1; the labels say what runs",
                   ["version", "python", "tornado", "socketio"], registry=REGISTRY)
BUILD_INFO.labels(__version__, platform.python_version(), tornado.version,
                  importlib.metadata.version("python-socketio")).set(1)
CLUSTER_MESSAGES_IN = Counter(
    "gateway_cluster_messages_in_total",
    "Pub/sub messages this node received from Redis (one per message, whatever it carried)",
    ["channel"], registry=REGISTRY)
ROOM_SUBSCRIPTIONS = Gauge(
    "gateway_room_subscriptions", "Live pub/sub subscriptions of this node, by channel kind",
    ["kind"], registry=REGISTRY)


@lru_cache(maxsize=4096)
def child(metric: Any, *label_values: str) -> Any:
    """``metric.labels(*label_values)``, remembered: the per-request call sites use it
    (prometheus-client validates and looks the labels up under a lock on every call)."""
    return metric.labels(*label_values)

