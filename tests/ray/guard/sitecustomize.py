"""Network guard for every Ray process the tests (and `make bench`) start: this directory goes on
their PYTHONPATH, so Python imports this file at start-up in each of them.

1. Ray 2.60.0's dashboard head (started even without the dashboard) probes the cloud metadata
   address 169.254.169.254 before it reads RAY_USAGE_STATS_ENABLED=0, then posts a "disabled" report
   to RAY_USAGE_STATS_REPORT_URL. Both functions are replaced as soon as Ray's usage module is
   imported: the probe answers "unknown", the report does nothing.
2. With ATTATTR_NET_AUDIT_DIR set, an audit hook writes to DIR/<pid>.log a "start" line, a "stubbed"
   line once the usage module is patched, and every connect / sendto of an internet socket and every
   name lookup (`<pid> <program> <event> <address>`), so a test can check that the guard was loaded
   and that nothing connected outside loopback.
"""

import importlib.abc
import importlib.machinery
import os
import sys

USAGE_MODULE = "ray._common.usage.usage_lib"
_log_path = None


def _log(line: str) -> None:
    if _log_path is not None:
        name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
        with open(_log_path, "a") as f:
            f.write(f"{os.getpid()} {name} {line}\n")


def _stub_usage(module) -> None:
    module.get_cloud_from_metadata_requests = lambda: "unknown"
    module.UsageReportClient.report_usage_data = lambda self, url, data: None
    _log("stubbed usage_lib")


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the real loader of USAGE_MODULE so it is stubbed once executed."""

    def find_spec(self, name, path=None, target=None):
        if name != USAGE_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            _stub_usage(module)

        spec.loader.exec_module = exec_module
        return spec


def install_stubs() -> None:
    if not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
    if USAGE_MODULE in sys.modules:  # imported before this ran (not at start-up): patch it now
        _stub_usage(sys.modules[USAGE_MODULE])


def install_audit(directory: str) -> None:
    """Log this process's internet connections and name lookups to directory/<pid>.log."""
    import socket

    global _log_path
    _log_path = os.path.join(directory, f"{os.getpid()}.log")
    _log("start")

    def audit(event, args):
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[1]
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                _log(f"{event} {address!r}")
        elif event == "socket.getaddrinfo":
            _log(f"{event} {args[0]!r}")

    sys.addaudithook(audit)


install_stubs()
if os.environ.get("ATTATTR_NET_AUDIT_DIR"):
    install_audit(os.environ["ATTATTR_NET_AUDIT_DIR"])
