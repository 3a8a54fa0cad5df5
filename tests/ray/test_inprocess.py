"""This process as the driver of the test cluster, with two workers kept for the module: every
dataset analysis through the Ray executor gives the single-process result; a shard failing on bad
input stops the run naming the example, or is left out when the run goes on; a model path the
workers cannot read is named, with --ship-model suggested."""

from __future__ import annotations

import pytest

from attattr import models
from attattr.analyses import executors, runs
from attattr.analyses.executors import RayExecutor
from attattr.core.errors import InputError, ModelError
from tests.ray import kinds

pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'attattr[ray]'")


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


def _labelled(n: int) -> list[tuple[str, None, int]]:
    return [(t, None, i % 2) for i, t in enumerate(kinds.texts(n))]


def test_head_importance_through_the_executor(pool, loaded, tiny_model_dir):
    from attattr.analyses.heads.importance import head_importance

    def importance(**kw):
        return head_importance(
            loaded.model, loaded.tokenizer, _labelled(9), "attattr", batch_size=3, steps=2, **kw
        )

    on_ray = importance(executor=pool, model_source=str(tiny_model_dir))
    assert on_ray.scores.tolist() == importance().scores.tolist()


def test_tree_stats_through_the_executor(pool, loaded, tiny_model_dir):
    from attattr.analyses.tree.stats import run_tree_stats

    def stats(**kw):
        return run_tree_stats(
            loaded.model, loaded.tokenizer, kinds.texts(6), ks=[0, 1], seeds=1, batch_size=3, steps=2, **kw
        )

    assert stats(executor=pool, model_source=str(tiny_model_dir)) == stats()


def test_triggers_mine_through_the_executor(pool, loaded, tiny_model_dir):
    from attattr.analyses.triggers import mine_patterns

    def mine(**kw):
        result = mine_patterns(
            loaded.model,
            loaded.tokenizer,
            _labelled(8),
            examples=8,
            min_tokens=0,
            steps=2,
            batch_size=3,
            **kw,
        )
        return [p.to_dict() for p in result.patterns]

    assert mine(executor=pool, model_source=str(tiny_model_dir)) == mine()


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
