"""`--ray local`: a one-machine cluster started by the executor, bound to 127.0.0.1 with usage stats
off and token authentication, the same records as the single-process run, and every process it
started gone after close."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from attattr import models
from attattr.analyses import runs
from attattr.analyses.executors import RayExecutor
from tests.ray import kinds
from tests.ray.conftest import addresses_in_logs, family, not_loopback, processes, stop_pids

ray = pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'attattr[ray]'")


def test_local_cluster_on_loopback_and_stopped_on_close(ray_env, tiny_model_dir, tmp_path):
    loaded = models.load(str(tiny_model_dir), build=False, quiet=True)
    job = runs.Job(kinds.KIND, {"steps": 2})
    texts = kinds.texts(6)
    plain = runs.run(job, texts, model=loaded.model, tokenizer=loaded.tokenizer, batch_size=2)
    with pytest.MonkeyPatch.context() as mp:
        # The cluster's processes inherit this process's environment: the guard (Ray's metadata probe
        # and usage report stubbed, connections logged) and a closed report URL, as everywhere in the
        # tests. The loopback, usage-stats and token settings are the executor's own to make.
        for key in ("PYTHONPATH", "ATTATTR_NET_AUDIT_DIR", "RAY_USAGE_STATS_REPORT_URL"):
            mp.setenv(key, ray_env[key])
        for key in (
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "RAY_USAGE_STATS_ENABLED",
        ):
            mp.delenv(key, raising=False)
        started: set[int] = set()
        try:
            with RayExecutor("local", workers=1, imports=["tests.ray.kinds"]) as executor:
                assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
                assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
                assert os.environ["RAY_AUTH_MODE"] == "token"
                records = runs.run(
                    job,
                    texts,
                    model=loaded.model,
                    tokenizer=loaded.tokenizer,
                    batch_size=2,
                    executor=executor,
                    model_source=str(tiny_model_dir),
                )
                started = family({os.getpid()}, processes()) - {os.getpid()}
                session = Path(ray._private.worker._global_node.get_session_dir_path())
                assert len(started) >= 3  # gcs_server, raylet, the worker...
                assert not_loopback(started | {os.getpid()}) == []
            assert "RAY_AUTH_TOKEN" not in os.environ  # the settings are undone on close
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and family(started, processes()):
                time.sleep(0.3)
            assert family(started, processes()) == set()
        finally:
            stop_pids(family(started, processes()))
    assert records == plain
    assert addresses_in_logs(session) == {}
