"""examples/: the Node (socket.io-client) and Python (python-socketio) chat clients against a real devstack."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from devstack_process import DevstackProcess
from harness import ROOT, node_with_packages

EXAMPLES = os.path.join(ROOT, "examples")
NODE_DIR = os.path.join(EXAMPLES, "node")


@pytest.fixture(scope="module")
def node():
    """``node`` with examples/node's pinned socket.io-client installed (npm ci on first use)."""
    return node_with_packages(NODE_DIR)


@pytest.fixture(scope="module")
def stack():
    process = DevstackProcess().start()
    yield process
    process.stop()


class Client:
    """One example script running; its `EVENT JSON` lines collected as they come."""

    def __init__(self, command: list[str]):
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[tuple[str, object]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, kind: str, timeout: float = 20) -> object:
        """The first ``kind`` line (already seen or still to come)."""
        deadline = time.monotonic() + timeout
        while not self.events(kind):
            if time.monotonic() > deadline or (self.proc.poll() is not None and self.lines.empty()):
                stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise AssertionError(f"no {kind!r}: saw {self.seen}; stderr {stderr}")
            try:
                self.seen.append(_split(self.lines.get(timeout=0.2)))
            except queue.Empty:
                continue
        return self.events(kind)[0]

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        while not self.lines.empty():
            name, data = _split(self.lines.get())
            self.seen.append((name, data))
        return code

    def events(self, kind: str) -> list:
        return [data for name, data in self.seen if name == kind]


def _split(line: str) -> tuple[str, object]:
    """``KIND JSON`` (a kind may hold a space: ``ack message:send {...}``)."""
    brace = line.find(" {")
    if brace < 0:
        kind, _, data = line.rpartition(" ")
        return kind, json.loads(data)
    return line[:brace], json.loads(line[brace + 1:])


def python_client(stack: DevstackProcess, *args: str) -> Client:
    return Client([sys.executable, os.path.join(EXAMPLES, "python", "chat_client.py"), "--url", stack.base, *args])


def node_client(node: str, stack: DevstackProcess, *args: str) -> Client:
    return Client([node, os.path.join(NODE_DIR, "chat_client.js"), "--url", stack.base, *args])


def check_exchange(listener: Client, sender: Client, text: str, sender_id: str, listener_id: str) -> None:
    ready = listener.wait_for("ready")
    assert ready["chatId"] == "c1" and ready["userId"] == listener_id
    receipt = sender.wait_for("receipt:delivered")
    message = listener.wait_for("message:new")["message"]
    assert message["text"] == text and message["senderId"] == sender_id
    assert receipt["messageId"] == message["id"] and receipt["userId"] == listener_id
    assert sender.finish() == 0 and listener.finish() == 0
    sent = sender.events("ack message:send")[0]
    assert sent["ok"] is True and sent["data"]["message"]["id"] == message["id"]
    assert sender.events("ack typing:start") == [{"ok": True, "data": {}}]
    typing = listener.events("typing:update")
    assert {"chatId": "c1", "userId": sender_id, "typing": True} in typing


def test_node_sends_to_python(node, stack):
    listener = python_client(stack, "--user", "bob", "--until", "message:new", "--listen", "20")
    listener.wait_for("ready")  # joined: what alice sends now reaches bob
    sender = node_client(node, stack, "--user", "alice", "--send", "hello from node", "--until",
                         "receipt:delivered")
    check_exchange(listener, sender, "hello from node", "u1", "u2")


def test_python_sends_to_node(node, stack):
    listener = node_client(node, stack, "--user", "carol", "--until", "message:new", "--listen", "20")
    listener.wait_for("ready")
    sender = python_client(stack, "--user", "alice", "--send", "hello from python", "--until",
                           "receipt:delivered")
    check_exchange(listener, sender, "hello from python", "u1", "u3")
