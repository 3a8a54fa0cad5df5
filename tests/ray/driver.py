"""A dataset run as a separate driver process, for the Ray tests: `python -m tests.ray.driver ...`.

Runs the "test.ray.heads" job over generated texts, with the Ray executor (--address) or in this
process (no --address), into a run file; prints one JSON line with the executor's stats and the
worker processes. --kill-after N kills (SIGKILL) a worker that is computing a shard once N shards
are done, from this driver, while the other shards run."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch

from attattr import models
from attattr.analyses import runs
from attattr.core.errors import AttattrError
from tests.ray import kinds


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--address")
    p.add_argument("--model", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--examples", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--ship-model", action="store_true")
    p.add_argument("--kill-after", type=int, default=0)
    p.add_argument("--fail-on")
    p.add_argument("--on-error", default="stop")
    p.add_argument("--connect-timeout", type=float, default=15.0)
    a = p.parse_args()
    torch.set_num_threads(1)

    loaded = models.load(a.model, build=False, quiet=True)
    settings = {"steps": a.steps, "sleep": a.sleep}
    if a.fail_on:
        settings["fail_on"] = a.fail_on
    job = runs.Job(kinds.KIND, settings)
    store = runs.RunStore(a.store, job)
    executor = None
    if a.address:
        from attattr.analyses.executors import RayExecutor

        executor = RayExecutor(
            a.address,
            workers=a.workers,
            cpus_per_worker=a.cpus_per_worker,
            ship_model=a.ship_model,
            imports=["tests.ray.kinds"],
            connect_timeout=a.connect_timeout,
        )
    done = {"shards": 0, "examples": 0}
    killed: list[int] = []

    def progress(n: int) -> None:
        done["shards"] += 1
        done["examples"] += n
        print(json.dumps({"progress": done["examples"]}), flush=True)
        if executor is not None and a.kill_after and not killed and done["shards"] >= a.kill_after:
            busy = [w for w in executor.worker_info() if w["shard"] is not None]
            if busy:
                os.kill(busy[0]["pid"], signal.SIGKILL)
                killed.append(busy[0]["pid"])

    try:
        if executor is not None:
            executor.start()
        runs.run(
            job,
            kinds.texts(a.examples),
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            store=store,
            executor=executor,
            batch_size=a.batch_size,
            progress=progress,
            on_error=a.on_error,
            model_source=a.model,
        )
    except AttattrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        info = {"killed": killed}
        if executor is not None:
            info |= {"stats": vars(executor.stats), "workers": executor.worker_info()}
            executor.close()
        print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
