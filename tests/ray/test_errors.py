"""Bad input on the Ray path: each a typed error (one line, exit 2 in the CLI), never a hang.

The first tests need no cluster (addresses, Ray missing, option checks); the others drive the test
cluster from this process: a shard failing on bad input (stop / continue), a model path the workers
cannot read."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest

from attattr import models
from attattr.analyses import executors, runs
from attattr.analyses.executors import RayExecutor
from attattr.cli.ray_options import check_ray_options, executor_from_options
from attattr.core.errors import InputError, ModelError
from tests.ray import kinds
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


# ---------------------------------------------------------------------------------------------
# With the test cluster, this process as the driver
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def connection(ray_cluster):
    """This process connected to the test cluster (Ray's token and loopback settings in its
    environment while connected); closed at the end of the module."""
    with pytest.MonkeyPatch.context() as mp:
        for key in (
            "RAY_AUTH_MODE",
            "RAY_AUTH_TOKEN",
            "RAY_USAGE_STATS_ENABLED",
            "RAY_USAGE_STATS_REPORT_URL",
        ):
            mp.setenv(key, ray_cluster.env[key])
        conn = executors.connect(ray_cluster.address)
        try:
            yield conn
        finally:
            conn.close()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return models.load(str(tiny_model_dir), build=False, quiet=True)


@pytest.fixture(scope="module")
def pool(connection):
    """Two workers on the existing connection, kept for the module (they load the model once)."""
    with RayExecutor(None, workers=2, imports=["tests.ray.kinds"]) as executor:
        yield executor


def _run(pool, loaded, tiny_model_dir, store, **kw):
    job = runs.Job(kinds.KIND, {"steps": 2, "fail_on": "5"})
    return runs.run(
        job,
        kinds.texts(12),
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        store=store,
        executor=pool,
        batch_size=3,
        model_source=str(tiny_model_dir),
        **kw,
    )


def test_bad_example_stops_the_run_naming_it(pool, loaded, tiny_model_dir):
    with pytest.raises(InputError, match=r"^example 5: cannot be attributed"):
        _run(pool, loaded, tiny_model_dir, runs.MemoryStore(), on_error="stop")


def test_bad_example_skipped_when_the_run_goes_on(pool, loaded, tiny_model_dir):
    store = runs.MemoryStore()
    with pytest.raises(RuntimeError, match=r"1 of 4 shards failed .*example 5"):
        _run(pool, loaded, tiny_model_dir, store, on_error="continue")
    shard = next(
        s
        for s in runs.plan(runs.as_examples(kinds.texts(12)), loaded.tokenizer, 3, max_length=64)
        if "5" in s.ids
    )
    assert sorted(store.records, key=int) == [str(i) for i in range(12) if str(i) not in shard.ids]
    assert pool.stats.worker_deaths == 0


def test_model_path_the_workers_cannot_read(pool, loaded, tmp_path):
    """Last in the module: the pool's workers are stopped by the failure (a new model source
    replaces them, and they cannot load it)."""
    missing = tmp_path / "only-on-the-driver"
    with pytest.raises(ModelError) as info:
        list(
            pool.execute(
                runs.Job(kinds.KIND, {"steps": 2}),
                runs.plan(runs.as_examples(["a film"]), loaded.tokenizer, 1, max_length=64),
                model=loaded.model,
                tokenizer=loaded.tokenizer,
                model_source=str(missing),
            )
        )
    message = str(info.value)
    assert str(missing) in message and "--ship-model" in message and "\n" not in message
