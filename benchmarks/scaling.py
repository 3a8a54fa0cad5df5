"""Scaling benchmark (`make bench`): the W3 workload in one process and on Ray, the per-shard
overhead, and a projection to 10,000 examples on 1-64 workers.

    python benchmarks/scaling.py                          # W3: 200 RT dev sentences, minilm-rt
    python benchmarks/scaling.py --quick                  # 16 sentences: checks that it works
    python benchmarks/scaling.py --model minilm-random    # MiniLM with a random head (no training)
    python benchmarks/scaling.py --address 10.0.0.1:6379 --workers 8   # an existing cluster

Configurations (the same job each time: head importance by attattr, gold label, fast mode =
Gauss-Legendre with steps=auto, dtype=auto, shards of --batch-size 8 examples):
  plain      the runner in this process, torch with --threads threads (2)
  ray 1x2    `--ray local`: 1 worker with 2 CPUs (2 torch threads)
  ray 2x1    `--ray local`: 2 workers with 1 CPU each
  (--address: the cluster given, with --workers x --cpus-per-worker)
Per Ray configuration: the cluster's start (local only), the workers' start (model loaded), the run
itself, the steady throughput (examples / (run - worker start)), and the overhead per shard (round
trip on the driver minus computation on the worker); a run of no-op shards measures the overhead
alone and the driver's ceiling (shards per second it can take in). The importance of each Ray run
is compared with the plain run's (max absolute difference; 0 where the thread counts are equal).

On machines without network, everything stays on 127.0.0.1: the clusters started here get the
settings of tests/ray/guard (Ray's cloud-metadata probe and usage report stubbed, usage stats off,
the report URL on a closed loopback port). Results: benchmarks/results/scaling-latest.{json,md}
(--quick: /tmp/attattr-bench/scaling-quick.*). With --address, the workers import this file by
name from the same folder as here (Ray puts the driver's script folder on their path), so the
repository must sit at the same path on every node.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GUARD = ROOT / "tests" / "ray" / "guard"
NOOP_KIND = "bench.noop"
PROJECT_EXAMPLES = 10_000
PROJECT_WORKERS = (1, 2, 4, 8, 16, 32, 64)


def guard_ray() -> None:
    """Before Ray is imported: the processes of the clusters started here inherit these settings."""
    with socket.socket() as s:  # a loopback port nothing listens on: a usage report would fail there
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    os.environ.update(
        RAY_USAGE_STATS_ENABLED="0",
        RAY_USAGE_STATS_REPORT_URL=f"http://127.0.0.1:{closed}/",
    )
    if GUARD.is_dir():
        paths = [str(GUARD), str(HERE), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        spec = importlib.util.spec_from_file_location("attattr_bench_ray_guard", GUARD / "sitecustomize.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))  # this process too


def register_noop() -> None:
    """A shard function that only returns one small record per example: its round trip is the
    executor's overhead (scheduling, sending the texts, returning the records)."""
    from attattr.analyses.runs import register_shard_function

    @register_shard_function(NOOP_KIND)
    def noop(model, tokenizer, examples, job):
        return [{"id": x.id, "n": len(x.text)} for x in examples]


def load_model(name: str, threads: int):
    """The model and where workers load it from. `minilm-random`: the shipped MiniLM encoder with a
    seeded random classification head, saved to a folder (same cost per example as minilm-rt)."""
    import torch

    from attattr import models

    torch.set_num_threads(threads)
    if name != "minilm-random":
        return models.load(name, quiet=False), name
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix="attattr-bench-minilm-"))
    torch.manual_seed(0)
    with models.quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(models.base_encoder_dir(), num_labels=2)
        model.config.id2label, model.config.label2id = (
            {0: "negative", 1: "positive"},
            {"negative": 0, "positive": 1},
        )
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(models.base_encoder_dir()).save_pretrained(folder)
    return models.load(str(folder), quiet=True), str(folder)


def importance(loaded, examples, args, executor=None, source=None):
    from attattr.analyses.heads.importance import head_importance

    result = head_importance(
        loaded.model,
        loaded.tokenizer,
        examples,
        "attattr",
        batch_size=args.batch_size,
        steps="auto",
        rule="gauss-legendre",
        dtype="auto",
        executor=executor,
        model_source=source,
    )
    return result.scores


def run_ray(name, loaded, source, examples, args, *, address, workers, cpus):
    """One Ray configuration: start, the W3 run, then no-op shards on the same workers."""
    from attattr.analyses import runs
    from attattr.analyses.executors import RayExecutor

    record = {"name": name, "workers": workers, "cpus_per_worker": cpus}
    t0 = time.perf_counter()
    executor = RayExecutor(address, workers=workers, cpus_per_worker=cpus, imports=["scaling"])
    with executor:
        record["cluster_start_s"] = time.perf_counter() - t0 if address == "local" else 0.0
        t1 = time.perf_counter()
        scores = importance(loaded, examples, args, executor, source)
        record["run_s"] = time.perf_counter() - t1
        stats = executor.stats
        record["workers_start_s"] = stats.startup_s
        record["compute_s"] = stats.compute_s
        record["shards"] = stats.shards
        record["overhead_per_shard_s"] = stats.overhead_per_shard_s
        record["steady_s"] = record["run_s"] - stats.startup_s
        record["examples_per_s"] = len(examples) / record["steady_s"]
        # no-op shards on the same (warm) workers: the overhead alone
        noop = runs.Job(NOOP_KIND, {"bench": name})
        before = (stats.shards, stats.round_trip_s, stats.compute_s)
        count = args.noop_shards * args.batch_size
        texts = [examples[i % len(examples)].text for i in range(count)]
        t2 = time.perf_counter()
        runs.run(
            noop,
            texts,
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            executor=executor,
            batch_size=args.batch_size,
            model_source=source,
        )
        noop_s = time.perf_counter() - t2
        shards = stats.shards - before[0]
        record["noop_shards"] = shards
        record["noop_overhead_per_shard_s"] = (
            (stats.round_trip_s - before[1]) - (stats.compute_s - before[2])
        ) / shards
        record["driver_shards_per_s"] = shards / noop_s
    return record, scores


def project(per_example_s: float, overhead_s: float, driver_rate: float, start_s: float, batch: int):
    """Projected wall time of PROJECT_EXAMPLES examples on W workers of the measured speed: the shards
    spread over the workers, each costing batch x per-example time + the overhead, and the driver
    taking in at most `driver_rate` shards per second; plus the workers' start."""
    shards = math.ceil(PROJECT_EXAMPLES / batch)
    rows = []
    for w in PROJECT_WORKERS:
        per_worker = math.ceil(shards / w) * (batch * per_example_s + overhead_s)
        total = start_s + max(per_worker, shards / driver_rate)
        rows.append({"workers": w, "projected_s": total, "speedup": None})
    for row in rows:
        row["speedup"] = rows[0]["projected_s"] / row["projected_s"]
    return rows


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-rt", help="recipe, directory, or minilm-random")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the plain run")
    p.add_argument("--noop-shards", type=int, default=40)
    p.add_argument("--address", help="an existing cluster instead of `local` configurations")
    p.add_argument("--workers", type=int, default=2, help="with --address")
    p.add_argument("--cpus-per-worker", type=int, default=1, help="with --address")
    p.add_argument("--quick", action="store_true", help="16 examples, 10 no-op shards: a check that it works")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results; /tmp with --quick)")
    args = p.parse_args()
    if args.quick:
        args.examples, args.noop_shards = 16, 10
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "attattr-bench" if args.quick else HERE / "results"
    guard_ray()
    register_noop()
    load_start = os.getloadavg()
    loaded, source = load_model(args.model, args.threads)
    try:
        return measure(args, loaded, source, load_start)
    finally:
        if args.model == "minilm-random":
            shutil.rmtree(source, ignore_errors=True)


def measure(args, loaded, source, load_start) -> int:
    import torch

    from attattr.data import load_dataset

    examples = load_dataset("rotten-tomatoes", "dev", limit=args.examples).examples
    print(
        f"{len(examples)} examples, model {loaded.model_id}, load average {load_start[0]:.1f}",
        file=sys.stderr,
    )

    t0 = time.perf_counter()
    plain_scores = importance(loaded, examples, args)
    plain_s = time.perf_counter() - t0
    results = {
        "plain": {
            "name": f"plain ({args.threads} threads)",
            "run_s": plain_s,
            "examples_per_s": len(examples) / plain_s,
        }
    }
    print(f"plain: {plain_s:.1f} s", file=sys.stderr)
    configs = (
        [("ray 1x2", "local", 1, 2), ("ray 2x1", "local", 2, 1)]
        if args.address is None
        else [
            (f"ray {args.workers}x{args.cpus_per_worker}", args.address, args.workers, args.cpus_per_worker)
        ]
    )
    for name, address, workers, cpus in configs:
        record, scores = run_ray(
            name, loaded, source, examples, args, address=address, workers=workers, cpus=cpus
        )
        record["max_abs_diff_vs_plain"] = float((scores - plain_scores).abs().max())
        record["throughput_ratio_vs_plain"] = record["examples_per_s"] / results["plain"]["examples_per_s"]
        results[name] = record
        print(
            f"{name}: run {record['run_s']:.1f} s (workers ready after {record['workers_start_s']:.1f} s), "
            f"overhead {1000 * record['noop_overhead_per_shard_s']:.1f} ms/shard",
            file=sys.stderr,
        )
    # projection: per-example cost of one 1-CPU worker (2x1), the no-op overhead, the driver's ceiling
    ray_runs = [r for k, r in results.items() if k != "plain"]
    base = min(ray_runs, key=lambda r: r["cpus_per_worker"])
    per_example = base["compute_s"] / len(examples)
    overhead = max(r["noop_overhead_per_shard_s"] for r in ray_runs)
    driver_rate = min(r["driver_shards_per_s"] for r in ray_runs)
    projection = project(per_example, overhead, driver_rate, base["workers_start_s"], args.batch_size)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "load_average": {"start": load_start[0], "end": os.getloadavg()[0]},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": loaded.model_id if args.model != "minilm-random" else "minilm-random",
        "examples": len(examples),
        "results": results,
        "projection": {
            "basis": {
                "per_example_s_per_worker": per_example,
                "cpus_per_worker": base["cpus_per_worker"],
                "overhead_per_shard_s": overhead,
                "driver_shards_per_s": driver_rate,
                "workers_start_s": base["workers_start_s"],
            },
            "rows": projection,
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "scaling-quick" if args.quick else "scaling-latest"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    r = report["results"]
    lines = [
        f"# Scaling: W3 ({report['examples']} RT dev sentences, fast mode, {report['model']})",
        "",
        f"{report['machine']['cpus']} CPUs, load average {report['load_average']['start']:.1f} at start, "
        f"{report['load_average']['end']:.1f} at end.",
        "",
        "| configuration | cluster start | workers start | run | steady examples/s | vs plain | overhead/shard | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['plain']['name']} | - | - | {r['plain']['run_s']:.1f} s | {r['plain']['examples_per_s']:.2f} | 1.00 | - | - |",
    ]
    for key, x in r.items():
        if key == "plain":
            continue
        lines.append(
            f"| {key} | {x['cluster_start_s']:.1f} s | {x['workers_start_s']:.1f} s | {x['run_s']:.1f} s | "
            f"{x['examples_per_s']:.2f} | {x['throughput_ratio_vs_plain']:.2f} | "
            f"{1000 * x['noop_overhead_per_shard_s']:.1f} ms | {x['max_abs_diff_vs_plain']:.2g} |"
        )
    b = report["projection"]["basis"]
    lines += [
        "",
        f"Driver ceiling: {b['driver_shards_per_s']:.0f} shards/s (no-op shards).",
        "",
        f"## Projection (not measured): {PROJECT_EXAMPLES:,} examples",
        "",
        f"From {b['per_example_s_per_worker']:.3f} s per example on a worker of {b['cpus_per_worker']} CPU, "
        f"{1000 * b['overhead_per_shard_s']:.1f} ms overhead per shard, the driver's ceiling and "
        f"{b['workers_start_s']:.0f} s of worker start; workers as fast as this machine's cores.",
        "",
        "| workers | projected wall time | speed-up |",
        "|---|---|---|",
    ]
    for row in report["projection"]["rows"]:
        lines.append(f"| {row['workers']} | {clock(row['projected_s'])} | {row['speedup']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
else:  # imported by a Ray worker (the executor's `imports`): the no-op shards run there
    register_noop()
