"""Bad input on the Ray path that needs no cluster: each a typed error (one line, exit 2 in the CLI),
never a hang: unreachable, silent, wrong and malformed addresses, Ray missing, option checks."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from attattr.analyses.executors import RayExecutor
from attattr.cli.ray_options import check_ray_options, executor_from_options
from attattr.core.errors import InputError
from tests.ray.conftest import free_port

pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'attattr[ray]'")


def _fails_within(seconds: float, match: str, address: str, **kw) -> None:
    started = time.monotonic()
    with pytest.raises(InputError, match=match) as info:
        RayExecutor(address, **kw).start()
    assert time.monotonic() - started < seconds
    assert "\n" not in str(info.value)


def test_closed_port_fails_at_once():
    port = free_port()
    _fails_within(5, rf"no Ray cluster at 127\.0\.0\.1:{port}: connection refused", f"127.0.0.1:{port}")


def test_silent_address_fails_within_the_timeout():
    with socket.socket() as server:  # accepts connections (the kernel does) but never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        port = server.getsockname()[1]
        _fails_within(5, r"no answer within 1 s", f"127.0.0.1:{port}", connect_timeout=1.0)


def test_http_server_is_not_a_ray_head():
    """The usual mistake: the dashboard's port (HTTP/1) instead of the head's (gRPC)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        _fails_within(5, r"not a Ray cluster's head .*GCS port", f"127.0.0.1:{server.getsockname()[1]}")
    finally:
        thread.join(timeout=5)
        server.close()


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "host:port", "127.0.0.1:99999"])
def test_malformed_address(address):
    with pytest.raises(InputError, match="expected a Ray head's address host:port"):
        RayExecutor(address)


def test_ray_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'attattr\[ray\]'"):
        check_ray_options("local", None, 1, 0.0, False)
    with pytest.raises(InputError, match=r"attattr\[ray\]"), executor_from_options("127.0.0.1:1", 2):
        pass


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ((None, 2, 1, 0.0, False), "--workers only apply with --ray"),
        ((None, None, 1, 0.0, True), "--ship-model only apply with --ray"),
        (("local", 0, 1, 0.0, False), "--workers must be an integer >= 1"),
        (("local", None, 0, 0.0, False), "--cpus-per-worker must be an integer >= 1"),
        (("local", None, 1, -1.0, False), "--gpus-per-worker must be >= 0"),
    ],
)
def test_option_errors(options, match):
    with pytest.raises(InputError, match=match):
        check_ray_options(*options)


def test_without_ray_the_executor_is_none():
    with executor_from_options(None, None) as executor:
        assert executor is None
