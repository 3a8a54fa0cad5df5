"""Dataset runs on a real Ray cluster (separate processes, loopback only) against the single-process
run: same records, a worker killed mid-run, a driver killed and resumed.

Each run is the "test.ray.heads" job (real attributions of a tiny BERT saved to a directory) over
24 texts in shards of at most 3, by `python -m tests.ray.driver` as its own process."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from attattr import models
from attattr.analyses import runs
from tests.ray import kinds
from tests.ray.conftest import not_loopback, stop_pids

EXAMPLES = 24


def read_run(path) -> list[dict]:
    """The records of a run file (a last line cut short by a kill is left out, as the runner does)."""
    records = []
    for line in path.read_text().splitlines()[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


@pytest.fixture(scope="module")
def expected(tiny_model_dir, tmp_path_factory) -> dict[str, dict]:
    """The job's records from a single-process run (the runner's local executor, one torch thread).
    The `sleep` setting of the Ray runs only slows them down; the records do not depend on it."""
    loaded = models.load(str(tiny_model_dir), build=False, quiet=True)
    job = runs.Job(kinds.KIND, {"steps": 4, "sleep": 0.0})
    path = tmp_path_factory.mktemp("plain") / "plain.jsonl"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs.run(
            job,
            kinds.texts(EXAMPLES),
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            store=runs.RunStore(path, job),
            batch_size=3,
        )
    finally:
        torch.set_num_threads(threads)
    return {r["id"]: r for r in read_run(path)}


def test_head_listens_on_loopback_only(ray_cluster):
    pids = ray_cluster.pids()
    assert len(pids) >= 4  # gcs_server, raylet, dashboard head, agents...
    assert not_loopback(pids) == []


def test_same_records_as_single_process(ray_cluster, tiny_model_dir, tmp_path, expected):
    store = tmp_path / "ray.jsonl"
    code, lines, err = ray_cluster.driver(
        "--address", ray_cluster.address, "--model", tiny_model_dir, "--store", store, "--examples", EXAMPLES
    )
    assert code == 0, err
    records = read_run(store)
    assert len(records) == EXAMPLES  # each example once
    assert {r["id"]: r for r in records} == expected  # identical numbers, not just close
    stats = lines[-1]["stats"]
    assert stats["shards"] == 8 and stats["examples"] == EXAMPLES and stats["retried_shards"] == 0
    assert [w["threads"] for w in lines[-1]["workers"]] == [1] * len(lines[-1]["workers"])
    assert lines[-2]["progress"] == EXAMPLES  # the driver saw every shard arrive


def test_worker_killed_mid_run_loses_nothing(ray_cluster, tiny_model_dir, tmp_path, expected):
    """kill -9 of a worker that is computing a shard (after 2 shards are done); the model is shipped
    through the object store here, so both ways of loading it are covered."""
    store = tmp_path / "ray.jsonl"
    code, lines, err = ray_cluster.driver(
        "--address",
        ray_cluster.address,
        "--model",
        tiny_model_dir,
        "--store",
        store,
        "--examples",
        EXAMPLES,
        "--sleep",
        0.3,
        "--kill-after",
        2,
        "--ship-model",
    )
    assert code == 0, err
    info = lines[-1]
    assert len(info["killed"]) == 1
    assert info["stats"]["worker_deaths"] == 1 and info["stats"]["retried_shards"] == 1
    assert info["killed"][0] not in [w["pid"] for w in info["workers"]]
    records = read_run(store)
    assert len(records) == EXAMPLES  # nothing lost, nothing twice
    assert {r["id"]: r for r in records} == expected


def test_driver_killed_then_same_command_resumes(ray_cluster, tiny_model_dir, tmp_path, expected):
    store = tmp_path / "ray.jsonl"
    args = ["--address", ray_cluster.address, "--model", tiny_model_dir, "--store", store]
    args += ["--examples", EXAMPLES, "--sleep", 0.5]
    driver = ray_cluster.driver(*args, wait=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and driver.poll() is None:
        if store.exists() and len(read_run(store)) >= 6:
            break
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()[1][-3000:]
    # mid-run: nothing of the cluster, its workers or the driver uses an address outside loopback
    assert not_loopback(ray_cluster.pids() | {driver.pid}) == []
    assert ray_cluster.workers()
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=30)
    before = len(read_run(store))
    assert 6 <= before < EXAMPLES
    # Ray stops the actors of a driver that died
    deadline = time.monotonic() + 60
    while ray_cluster.workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = ray_cluster.workers()
    stop_pids(leftover)
    assert not leftover

    code, lines, err = ray_cluster.driver(*args)
    assert code == 0, err
    assert lines[0]["progress"] == before  # resumed: the finished examples were counted first
    assert lines[-1]["stats"]["examples"] == EXAMPLES - before  # and not computed again
    records = read_run(store)
    assert len(records) == EXAMPLES
    assert {r["id"]: r for r in records} == expected
