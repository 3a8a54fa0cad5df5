"""A real Ray cluster on loopback for the Ray tests, started as separate processes and stopped by PID.

Only 127.0.0.1 may be used: every process gets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray would bind
the interface address), token authentication with a token made here (nothing in ~/.ray), usage
stats off with the report URL on a closed loopback port, and guard/ on its PYTHONPATH (guard/
sitecustomize.py stubs Ray's cloud-metadata probe and usage report, and logs every internet
connection to the audit folder, which test_network.py reads).

ray_env (session)      the environment for Ray processes and drivers: os.environ + the settings above
audit_dir (session)    the folder of the network audit logs (this process logs there too while the
                       Ray tests run)
ray_cluster (session)  a head started with `ray start --head --node-ip-address=127.0.0.1`; a
                       `Cluster` with .address, .temp_dir, .pids() (every process of the cluster,
                       workers included) and .driver(*args) (runs tests.ray.driver as a process)
tiny_model_dir (session) a tiny random classifier saved to a directory every worker can read
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUARD = Path(__file__).parent / "guard"
HEAD_START_TIMEOUT = 120  # seconds (ray start takes ~10 s on an idle 2-core machine)
DRIVER_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie holds nothing; its parent reaps it
            continue
        out[int(entry)] = (int(fields[1]), args.strip())
    return out


def family(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    """Those of `roots` still running and all their descendants."""
    found = {pid for pid in roots if pid in table}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def stop_pids(pids: set[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after `grace` seconds; only the pids given."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = {p for p in pids if _alive(p)}
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = {p for p in alive if _alive(p)}
        if not alive:
            return


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def not_loopback(pids: set[int]) -> list[str]:
    """`ss` lines (TCP and UDP, listening and connected) of these processes with an address that is
    not loopback. A listener's peer (`*`, `0.0.0.0:*`) is no address."""
    out = subprocess.run(["ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout
    bad = []
    for line in out.splitlines():
        if not {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids:
            continue
        local, peer = line.split()[4:6]
        for is_peer, addr in ((False, local), (True, peer)):
            host = addr.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:").split("%")[0]
            if is_peer and host in ("*", "0.0.0.0", "::"):
                continue
            if not (host.startswith("127.") or host == "::1"):
                bad.append(line)
                break
    return bad


IPV4 = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?![\d.])")


def addresses_in_logs(session_dir: Path) -> dict[str, str]:
    """IPv4 addresses other than loopback (and 0.0.0.0) named in a Ray session's log files, with
    the first file naming each: Ray's C++ processes are not audited, but they log where they connect."""
    found: dict[str, str] = {}
    for path in Path(session_dir).glob("logs/**/*"):
        if not path.is_file():
            continue
        for match in IPV4.findall(path.read_text(errors="replace")):
            parts = [int(p) for p in match.split(".")]
            if max(parts) <= 255 and parts[0] != 127 and match != "0.0.0.0":
                found.setdefault(match, path.name)
    return found


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    env: dict[str, str]
    drivers: list[subprocess.Popen] = field(default_factory=list)

    def pids(self) -> set[int]:
        """The head's processes (their command lines name our temp dir) and their descendants."""
        table = processes()
        roots = {pid for pid, (_, args) in table.items() if str(self.temp_dir) in args and pid != os.getpid()}
        return family(roots, table)

    def workers(self) -> set[int]:
        table = processes()
        return {p for p in self.pids() if table.get(p, (0, ""))[1].startswith("ray::ShardWorker")}

    def driver(self, *args, wait: bool = True, timeout: float = DRIVER_TIMEOUT):
        """tests.ray.driver with `args` as a separate process (its cwd is the repository, so the
        workers can import tests.ray.kinds). wait: (exit code, stdout lines as JSON, stderr)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ray.driver", *map(str, args)],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.drivers.append(proc)
        if not wait:
            return proc
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_pids({proc.pid})
            out, err = proc.communicate()
            pytest.fail(f"driver did not finish within {timeout} s:\n{err[-3000:]}")
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return proc.returncode, lines, err


@pytest.fixture(scope="session")
def audit_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("net-audit")
    spec = importlib.util.spec_from_file_location("attattr_test_ray_guard", GUARD / "sitecustomize.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    guard.install_audit(str(directory))  # this process (a driver in some tests) is audited too
    yield directory
    guard._log_path = None  # stop logging; audit hooks cannot be removed


@pytest.fixture(scope="session")
def ray_env(audit_dir) -> dict[str, str]:
    closed = free_port()  # nothing listens there: a report sent to it would fail, on loopback
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=os.urandom(16).hex(),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_USAGE_STATS_REPORT_URL=f"http://127.0.0.1:{closed}/",
        ATTATTR_NET_AUDIT_DIR=str(audit_dir),
        PYTHONPATH=os.pathsep.join(filter(None, [str(GUARD), str(ROOT), env.get("PYTHONPATH")])),
        ATTATTR_TEST_THREADS="1",
    )
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="session")
def ray_cluster(ray_env):
    pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'attattr[ray]'")
    temp_dir = Path(tempfile.mkdtemp(prefix="attattr-ray-", dir="/tmp"))  # short: socket paths
    port = free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    cluster = Cluster(f"127.0.0.1:{port}", temp_dir, ray_env)
    command = [
        str(ray_bin),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        "--object-store-memory=200000000",
    ]
    try:
        started = subprocess.run(
            command, env=ray_env, capture_output=True, text=True, timeout=HEAD_START_TIMEOUT
        )
        if started.returncode != 0:
            pytest.fail(f"ray start failed:\n{started.stderr[-3000:]}")
        yield cluster
    finally:
        stop_pids({p.pid for p in cluster.drivers if p.poll() is None})
        stop_pids(cluster.pids())
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    model = build_tiny_model("bert")
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)
    return path
