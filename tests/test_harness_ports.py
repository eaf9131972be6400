"""The test harness's own rule: a gateway whose random port was taken meanwhile starts again
on other ports (free_port can only pick a port that was free a moment ago)."""

from __future__ import annotations

import socket
import urllib.request

from harness import GatewayProcess, free_port


def test_a_gateway_whose_port_was_taken_starts_on_another(stub_upstreams):
    gateway = GatewayProcess(stub_upstreams.env())
    taken = gateway.port
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", taken))  # bound, not listening: the gateway cannot bind it
    try:
        gateway.start()
        assert gateway.port != taken and gateway.env["PORT"] == str(gateway.port)
        with urllib.request.urlopen(gateway.url("/healthz"), timeout=5) as answer:
            assert answer.status == 200
    finally:
        gateway.stop()
        squatter.close()


def test_free_port_never_hands_out_a_recent_pick_again():
    picks = [free_port() for _ in range(1000)]
    assert len(set(picks)) == len(picks)
