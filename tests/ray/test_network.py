"""Nothing of the Ray tests went outside loopback. Runs after the other Ray tests (file order), so
it covers every process they started; run alone, it checks the cluster's start-up.

1. The audit logs of guard/sitecustomize.py: the guard ran in the cluster's Python processes (and
   stubbed Ray's usage module in the dashboard head, which otherwise probes 169.254.169.254), and
   no Python-level connect, sendto or name lookup of any process went outside loopback.
2. Ray's own logs (its C++ processes are not audited): no IPv4 address but loopback appears in
   them, e.g. no attempt to reach the head at the interface address."""

from __future__ import annotations

import ast
import ipaddress

from tests.ray.conftest import addresses_in_logs, not_loopback

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return (
        address.is_loopback
        or getattr(address, "ipv4_mapped", None) is not None
        and address.ipv4_mapped.is_loopback
    )


def test_no_process_connected_outside_loopback(ray_cluster, audit_dir):
    lines = [line for path in sorted(audit_dir.glob("*.log")) for line in path.read_text().splitlines()]
    started = {line.split()[1] for line in lines if line.endswith(" start")}
    assert {"dashboard.py", "log_monitor.py", "monitor.py"} <= started, started
    assert any(" dashboard.py stubbed usage_lib" in line for line in lines)
    outside = []
    for line in lines:
        pid, program, event, *rest = line.split(" ", 3)
        if event in ("socket.connect", "socket.sendto"):
            address = ast.literal_eval(rest[0])
            if not _loopback(str(address[0])):
                outside.append(line)
        elif event == "socket.getaddrinfo":
            host = ast.literal_eval(rest[0])
            if host is not None and not _loopback(str(host)):
                outside.append(line)
    assert outside == []
    assert not_loopback(ray_cluster.pids()) == []


def test_ray_logs_name_no_address_outside_loopback(ray_cluster):
    sessions = list(ray_cluster.temp_dir.glob("session_2*"))
    assert sessions
    for session in sessions:
        assert addresses_in_logs(session) == {}
