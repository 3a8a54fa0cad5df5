"""The benchmark suite (`make bench`): attattr's engine against the paper's algorithm and Captum.

    python benchmarks/run.py                 # everything, about 18 minutes on 2 idle cores
    python benchmarks/run.py --only w1,w3    # a subset (sections: peak, nodes, bf16, w1, w2, w3)
    python benchmarks/run.py --quick         # a smoke run with small sizes (a minute or two)

Every configuration runs in a fresh subprocess (its peak resident memory is its own) and writes
one JSON record; the parent computes errors against the Gauss-Legendre reference, the speed-up
ratios and the goals, and writes benchmarks/results/<date>.json, latest.json and latest.md.
See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("peak", "nodes", "bf16", "w1", "w2", "w3")


# ---------------------------------------------------------------------------------------------
# Worker side: one configuration per process
# ---------------------------------------------------------------------------------------------
def _rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _log(msg: str) -> None:
    sys.stderr.write(f"    {msg}\n")
    sys.stderr.flush()


def task_peak(cfg: dict) -> dict:
    """Matrix-product peak of this machine for one dtype: best of `reps` size x size products."""
    import torch

    from flops import matmul_flops

    dtype = getattr(torch, cfg["dtype"])
    size = cfg["size"]
    probe = torch.randn(512, 512, dtype=dtype)
    probe @ probe
    t0 = time.perf_counter()
    probe @ probe
    probe_rate = matmul_flops(512) / (time.perf_counter() - t0)
    note = None
    if matmul_flops(size) / probe_rate > 8.0:  # no fast kernel for this dtype: a smaller product says as much
        size = 1024
        note = f"no fast {cfg['dtype']} kernel: measured on {size}x{size} (a {cfg['size']}^2 product takes minutes)"
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(cfg["reps"] if note is None else 2):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return {
        "dtype": cfg["dtype"],
        "size": size,
        "times": times,
        "gflops": matmul_flops(size) / min(times) / 1e9,
        "note": note,
    }


def _w1_setup(tokens: int):
    import attattr  # noqa: F401  (registers the attention function before timing)
    from workloads import bert_base_random, minilm_tokenizer, text_of_tokens

    model = bert_base_random()
    tok = minilm_tokenizer()
    return model, tok, text_of_tokens(tok, tokens)


def task_w1(cfg: dict) -> dict:
    """W1/W2: one input of `tokens` tokens on the BERT-base-shaped model, one method."""
    import torch

    import attattr
    from attattr.core.engine import default_memory_budget, plan_passes

    model, tok, text = _w1_setup(cfg["tokens"])
    inputs = dict(tok(text, return_tensors="pt"))
    if cfg["method"] == "engine":  # one-off costs (finding the layer modules) are not timed
        attattr.attribute(model, tok, "a warm up", rule="gauss-legendre", steps=1)
    rss_setup = _rss_now()
    method = cfg["method"]
    times, record = [], {}
    for run in range(cfg["runs"]):
        t0 = time.perf_counter()
        if method == "paper":
            from paper_baseline import paper_attribution

            scores = paper_attribution(model, inputs, steps=cfg["steps"])
        elif method == "captum":
            from captum_baseline import captum_attribution

            scores = captum_attribution(model, inputs, steps=cfg["steps"])
        else:
            attr = attattr.attribute(
                model,
                tok,
                text,
                rule=cfg.get("rule", "riemann-right"),
                steps=cfg.get("steps", 20),
                dtype=cfg.get("dtype"),
                fast=cfg.get("fast", False),
                memory_budget=cfg.get("memory_budget"),
            )
            scores = attr.scores
            record.update(
                nodes=attr.steps,
                rule=attr.rule,
                dtype=attr.dtype,
                output_value=attr.output_value,
                baseline_values=attr.baseline_values,
            )
        times.append(time.perf_counter() - t0)
        _log(f"{cfg['name']}: run {run + 1}/{cfg['runs']} {times[-1]:.1f} s")
        if sum(times) > cfg.get("max_seconds", 1e9):
            break
    if method == "engine":
        budget = cfg.get("memory_budget") or default_memory_budget(torch.device("cpu"))
        dtype = torch.bfloat16 if record["dtype"] == "bfloat16" else None
        passes = plan_passes(list(range(12)), record["nodes"], 12, 1, cfg["tokens"], model, budget, dtype)
        record.update(memory_budget=budget, passes=len(passes))
    else:
        record.update(nodes=cfg["steps"], rule="riemann-right", dtype="float32")
    if cfg.get("save"):
        torch.save(scores, cfg["save"])
    from flops import model_shape

    return {
        **record,
        "times": times,
        "tokens": cfg["tokens"],
        "shape": model_shape(model),
        "rss_setup": rss_setup,
        "rss_peak": _rss_peak(),
    }


def _rt_examples(limit: int):
    from attattr.data import load_dataset

    return load_dataset("rotten-tomatoes", "dev", limit=limit).examples


def _default_model():
    from attattr.models import load

    return load("minilm-rt", quiet=False)


def task_w3(cfg: dict) -> dict:
    """W3: dataset head importance (gold label) over the first N Rotten Tomatoes dev sentences."""
    import torch

    import attattr
    from flops import model_shape

    loaded = _default_model()
    model, tok = loaded.model, loaded.tokenizer
    # a stride picks a subset spread over the examples (their lengths then match the whole set's)
    examples = _rt_examples(cfg["examples"])[:: cfg.get("stride", 1)]
    if cfg["method"] == "engine":
        attattr.attribute(model, tok, "a warm up", rule="gauss-legendre", steps=1)
    rss_setup = _rss_now()
    times, record = [], {}
    keep = cfg.get("keep", 0)
    for run in range(cfg["runs"]):
        importance = torch.zeros(model.config.num_hidden_layers, model.config.num_attention_heads)
        kept = []
        tokens = []
        t0 = time.perf_counter()
        if cfg["method"] == "paper":  # example by example, as the authors' code runs
            from paper_baseline import paper_attribution

            for ex in examples:
                inputs = dict(tok(ex.text, return_tensors="pt"))
                scores = paper_attribution(model, inputs, target=int(ex.label), steps=cfg["steps"])
                importance += scores.flatten(2).amax(2)
                tokens.append(inputs["input_ids"].shape[1])
                if len(kept) < keep:
                    kept.append(scores)
        else:
            for attr in attattr.attribute_many(
                model,
                tok,
                examples,
                target="gold",
                batch_size=cfg["batch_size"],
                rule=cfg.get("rule", "riemann-right"),
                steps=cfg.get("steps", 20),
                dtype=cfg.get("dtype"),
                fast=cfg.get("fast", False),
                model_id=loaded.model_id,
            ):
                importance += attr.head_importance()
                tokens.append(len(attr.tokens))
                if len(kept) < keep:
                    kept.append(attr.scores)
                record.update(nodes=attr.steps, rule=attr.rule, dtype=attr.dtype)
        times.append(time.perf_counter() - t0)
        _log(f"{cfg['name']}: run {run + 1}/{cfg['runs']} {times[-1]:.1f} s ({len(examples)} examples)")
        if sum(times) > cfg.get("max_seconds", 1e9):
            break
    if cfg["method"] == "paper":
        record.update(nodes=cfg["steps"], rule="riemann-right", dtype="float32")
    if cfg.get("save") and kept:
        torch.save(kept, cfg["save"])
    return {
        **record,
        "times": times,
        "examples": len(examples),
        "mean_tokens": statistics.mean(tokens),
        "tokens": tokens,
        "importance": (importance / len(examples)).tolist(),
        "model_id": loaded.model_id,
        "shape": model_shape(model),
        "rss_setup": rss_setup,
        "rss_peak": _rss_peak(),
    }


def _relative_error(a, ref) -> float:
    return float((a.double() - ref.double()).norm() / ref.double().norm())


def task_nodes(cfg: dict) -> dict:
    """How many Gauss-Legendre nodes match the paper's 20-step right Riemann sum, on the default
    model over the first K dev sentences (gold label): every rule against a many-node reference."""
    import torch

    import attattr

    loaded = _default_model()
    model, tok = loaded.model, loaded.tokenizer
    examples = _rt_examples(cfg["examples"])

    def run(rule, steps):
        t0 = time.perf_counter()
        out = list(
            attattr.attribute_many(
                model, tok, examples, target="gold", rule=rule, steps=steps, batch_size=len(examples)
            )
        )
        return out, time.perf_counter() - t0

    reference, t_ref = run("gauss-legendre", cfg["reference_nodes"])
    _log(f"nodes: reference GL-{cfg['reference_nodes']} {t_ref:.1f} s")
    rows = []
    candidates = [("riemann-right", 20)] + [("gauss-legendre", n) for n in cfg["gauss_nodes"]]
    if cfg.get("check_reference"):  # how far the reference itself is from a half-size one
        candidates.append(("gauss-legendre", cfg["check_reference"]))
    for rule, steps in candidates:
        got, seconds = run(rule, steps)
        errors = [_relative_error(g.scores, r.scores) for g, r in zip(got, reference, strict=True)]
        gaps = [float(g.completeness_gaps().abs().max()) for g in got]
        rows.append(
            {
                "rule": rule,
                "nodes": steps,
                "seconds": seconds,
                "errors": errors,
                "mean_error": statistics.mean(errors),
                "median_error": statistics.median(errors),
                "max_error": max(errors),
                "max_gap": max(gaps),
                "mean_gap": statistics.mean(gaps),
            }
        )
        _log(f"nodes: {rule} {steps}: mean relative error {rows[-1]['mean_error']:.2e} ({seconds:.1f} s)")
        if cfg.get("save_exact") and rule == "riemann-right":
            torch.save([g.scores for g in got], cfg["save_exact"])
    ref_gaps = [float(r.completeness_gaps().abs().max()) for r in reference]
    paper = rows[0]
    chosen = None
    for row in rows[1:]:
        if row["rule"] == "gauss-legendre" and row["nodes"] in cfg["gauss_nodes"]:
            if row["mean_error"] <= paper["mean_error"] and row["median_error"] <= paper["median_error"]:
                chosen = row["nodes"]
                break
    return {
        "examples": len(examples),
        "model_id": loaded.model_id,
        "reference_nodes": cfg["reference_nodes"],
        "reference_seconds": t_ref,
        "reference_max_gap": max(ref_gaps),
        "rows": rows,
        "chosen": chosen,
        "mean_tokens": statistics.mean(len(r.tokens) for r in reference),
    }


def task_bf16(cfg: dict) -> dict:
    """The bf16 acceptance check: fast-mode nodes in bf16 against fp32 on K dev sentences."""
    import torch
    from scipy.stats import spearmanr

    import attattr

    loaded = _default_model()
    model, tok = loaded.model, loaded.tokenizer
    examples = _rt_examples(cfg["examples"])
    out = {}
    for dtype in ("float32", "bfloat16"):
        # in chunks, so that a CPU without fast bf16 kernels can stop at the time limit
        t0 = time.perf_counter()
        out[dtype] = []
        chunk = cfg["batch_size"]
        for c0 in range(0, len(examples), chunk):
            out[dtype] += attattr.attribute_many(
                model,
                tok,
                examples[c0 : c0 + chunk],
                target="gold",
                rule="gauss-legendre",
                steps=cfg["nodes"],
                dtype=dtype,
                batch_size=chunk,
            )
            if time.perf_counter() - t0 > cfg.get("max_seconds", 1e9):
                break
        out[dtype + "_seconds"] = time.perf_counter() - t0
        _log(f"bf16: {dtype} {out[dtype + '_seconds']:.1f} s, {len(out[dtype])} examples")
    out["float32"] = out["float32"][: len(out["bfloat16"])]
    fp32, bf16 = out["float32"], out["bfloat16"]
    imp32 = torch.stack([a.head_importance() for a in fp32])  # [K, L, H]
    imp16 = torch.stack([a.head_importance() for a in bf16])
    dataset_rho = float(spearmanr(imp32.mean(0).flatten(), imp16.mean(0).flatten())[0])
    per_example_rho = [
        float(spearmanr(a.flatten(), b.flatten())[0]) for a, b in zip(imp32, imp16, strict=True)
    ]

    def edges(a):
        return {(e.layer, e.head, e.query, e.key) for e in a.top_edges(10)}

    overlaps = [len(edges(a) & edges(b)) for a, b in zip(fp32, bf16, strict=True)]
    errors = [_relative_error(b.scores, a.scores) for a, b in zip(fp32, bf16, strict=True)]
    accepted = dataset_rho >= 0.99 and statistics.mean(overlaps) >= 9
    return {
        "examples": len(bf16),
        "examples_asked": len(examples),
        "nodes": cfg["nodes"],
        "dataset_spearman": dataset_rho,
        "per_example_spearman_median": statistics.median(per_example_rho),
        "per_example_spearman_min": min(per_example_rho),
        "top10_overlap_mean": statistics.mean(overlaps),
        "top10_overlap_min": min(overlaps),
        "relative_difference_mean": statistics.mean(errors),
        "fp32_seconds": out["float32_seconds"],
        "bf16_seconds": out["bfloat16_seconds"],
        "accepted": accepted,
    }


TASKS = {"peak": task_peak, "w1": task_w1, "w3": task_w3, "nodes": task_nodes, "bf16": task_bf16}


def worker(cfg: dict, result_path: str) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    result = TASKS[cfg["task"]](cfg)
    Path(result_path).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------
class Suite:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="attattr-bench-"))
        self.results: dict = {"configs": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.t_start = time.perf_counter()

    def run(self, name: str, task: str, **cfg) -> dict | None:
        cfg = {"name": name, "task": task, "threads": self.args.threads, **cfg}
        path = self.tmp / f"{name}.json"
        sys.stderr.write(f"[{self.elapsed():6.0f} s] {name}\n")
        sys.stderr.flush()
        proc = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                json.dumps(cfg),
                "--result",
                str(path),
            ],
            cwd=HERE.parent,
        )
        if proc.returncode != 0 or not path.exists():
            sys.stderr.write(f"    {name} failed (exit {proc.returncode})\n")
            self.results["configs"][name] = {"failed": True, "exit": proc.returncode}
            return None
        result = json.loads(path.read_text())
        result["config"] = {k: v for k, v in cfg.items() if k not in ("save", "save_exact")}
        self.results["configs"][name] = result
        self.save_partial()
        return result

    def interleaved(self, specs: list[tuple[str, str, dict]]) -> None:
        """Several configurations' runs in turns (run r of each before run r + 1 of any), one
        process per run, so that a change in the machine's load falls on all of them alike.
        A spec's `runs` is its number of turns; `max_seconds` ends its turns early."""
        merged: dict[str, dict] = {}
        for turn in range(max(cfg["runs"] for _, _, cfg in specs)):
            for name, task, cfg in specs:
                prev = merged.get(name)
                if turn >= cfg["runs"] or (prev is not None and prev.get("failed")):
                    continue
                if prev is not None and sum(prev["times"]) > cfg.get("max_seconds", 1e9):
                    continue
                one = dict(cfg, runs=1)
                if turn > 0:  # the scores are the same every run: keep the first
                    one.pop("save", None)
                result = self.run(name, task, **one)
                if result is None:
                    merged[name] = {"failed": True}
                elif prev is None:
                    merged[name] = result
                else:
                    prev["times"] += result["times"]
                    if result["rss_peak"] > prev["rss_peak"]:
                        prev["rss_peak"], prev["rss_setup"] = result["rss_peak"], result["rss_setup"]
                self.results["configs"][name] = merged[name]
                self.save_partial()

    def path(self, name: str) -> str:
        return str(self.tmp / f"{name}.pt")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def save_partial(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "partial.json.tmp").write_text(json.dumps(self.results, indent=1))


def machine_info(threads: int) -> dict:
    import torch
    import transformers

    cpu = "unknown"
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "isa": isa,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_start": os.getloadavg(),
    }


def median(xs):
    return statistics.median(xs) if xs else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (a smoke test)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per engine configuration")
    parser.add_argument(
        "--baseline-runs", type=int, default=3, help="timed runs of the slow W1 baselines (paper, Captum)"
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=240,
        help="a slow configuration (baselines, W2 512) stops repeating once its runs took this long",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 2, or 1 when other jobs already keep the cores busy)",
    )
    parser.add_argument("--reference-nodes", type=int, default=256, help="Gauss-Legendre reference (MiniLM)")
    parser.add_argument(
        "--w1-reference-nodes", type=int, default=32, help="Gauss-Legendre reference of W1 (BERT-base)"
    )
    parser.add_argument(
        "--reference-check-nodes", type=int, default=32, help="a smaller reference, to show convergence"
    )
    parser.add_argument("--node-examples", type=int, default=8, help="dev sentences for the node study")
    parser.add_argument("--bf16-examples", type=int, default=50)
    parser.add_argument("--w3-examples", type=int, default=200)
    parser.add_argument("--w3-baseline-examples", type=int, default=8)
    parser.add_argument(
        "--w3-batch-size", type=int, default=8, help="attribute_many's batch_size (its default)"
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker), args.result)
        return
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if args.quick:
        args.runs, args.baseline_runs = 1, 1
        args.reference_nodes, args.w1_reference_nodes, args.reference_check_nodes = 16, 8, 8
        args.node_examples, args.bf16_examples = 2, 4
        args.w3_examples, args.w3_baseline_examples = 8, 1
        if args.out == str(HERE / "results"):  # smoke runs never overwrite the real results
            args.out = str(Path(tempfile.gettempdir()) / "attattr-bench-quick")

    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.threads is None:
        # On cores other jobs keep busy, a second thread mostly waits at OpenMP barriers: measured
        # here, one thread ran the W1 fast mode 1.6-2.6x faster than two at a load average of 5.5.
        args.threads = 1 if load >= cores - 0.5 else min(2, cores)
    if load > 0.5:
        sys.stderr.write(
            f"note: load average {load:.1f} on {cores} cores: other jobs share the machine, so the timings "
            f"will be slower and noisier than on an idle machine; using {args.threads} torch thread(s)\n"
        )
    suite = Suite(args)
    from report import finish

    suite.results["machine"] = machine_info(args.threads)
    suite.results["settings"] = {k: v for k, v in vars(args).items() if k not in ("worker", "result")}
    import attattr.core.engine as engine

    suite.results["auto_gauss_nodes"] = engine.AUTO_GAUSS_NODES
    w1_tokens = 32 if args.quick else 64

    if "peak" in sections:
        for dtype in ("float32", "bfloat16"):
            suite.run(f"peak-{dtype}", "peak", dtype=dtype, size=512 if args.quick else 2048, reps=5)

    if "nodes" in sections:
        suite.run(
            "nodes",
            "nodes",
            examples=args.node_examples,
            reference_nodes=args.reference_nodes,
            gauss_nodes=list(range(1, 7)),
            check_reference=args.reference_check_nodes,
            save_exact=suite.path("nodes-exact"),
        )

    if "bf16" in sections:
        suite.run(
            "bf16",
            "bf16",
            examples=args.bf16_examples,
            nodes=engine.AUTO_GAUSS_NODES,
            batch_size=10,
            max_seconds=args.slow_seconds,
        )

    if "w1" in sections:
        common = {"tokens": w1_tokens}
        suite.run(
            "w1-reference",
            "w1",
            **common,
            method="engine",
            rule="gauss-legendre",
            steps=args.w1_reference_nodes,
            runs=1,
            save=suite.path("w1-reference"),
        )
        slow = {"runs": args.baseline_runs, "steps": 20, "max_seconds": args.slow_seconds}
        suite.interleaved(
            [
                ("w1-paper", "w1", {**common, **slow, "method": "paper", "save": suite.path("w1-paper")}),
                ("w1-captum", "w1", {**common, **slow, "method": "captum", "save": suite.path("w1-captum")}),
                (
                    "w1-exact",
                    "w1",
                    {**common, "method": "engine", "runs": args.runs, "save": suite.path("w1-exact")},
                ),
                (
                    "w1-fast",
                    "w1",
                    {
                        **common,
                        "method": "engine",
                        "fast": True,
                        "runs": args.runs,
                        "save": suite.path("w1-fast"),
                    },
                ),
            ]
        )

    if "w2" in sections:
        for tokens in (128, 512):
            if args.quick:
                tokens = tokens // 4
            suite.run(
                f"w2-fast-{tokens}",
                "w1",
                tokens=tokens,
                method="engine",
                fast=True,
                runs=args.runs,
                max_seconds=args.slow_seconds if tokens >= 512 else 1e9,
            )

    if "w3" in sections:
        few = args.w3_baseline_examples
        stride = max(1, args.w3_examples // few)
        suite.interleaved(
            [
                (
                    "w3-fast",
                    "w3",
                    {
                        "method": "engine",
                        "fast": True,
                        "examples": args.w3_examples,
                        "batch_size": args.w3_batch_size,
                        "runs": args.runs,
                        "keep": few,
                        "save": suite.path("w3-fast"),
                    },
                ),
                (
                    "w3-paper",
                    "w3",
                    {
                        "method": "paper",
                        "steps": 20,
                        "examples": stride * few,
                        "stride": stride,
                        "runs": args.baseline_runs,
                        "max_seconds": args.slow_seconds / 2,
                        "keep": few,
                        "save": suite.path("w3-paper"),
                    },
                ),
                (
                    "w3-exact",
                    "w3",
                    {
                        "method": "engine",
                        "examples": stride * few,
                        "stride": stride,
                        "batch_size": args.w3_batch_size,
                        "runs": args.runs,
                        "keep": few,
                        "save": suite.path("w3-exact"),
                    },
                ),
            ]
        )

    if "peak" in sections and not args.quick:  # again at the end: the best of both is the peak
        for dtype in ("float32", "bfloat16"):
            suite.run(f"peak-{dtype}-end", "peak", dtype=dtype, size=2048, reps=5)

    suite.results["machine"]["load_average_end"] = os.getloadavg()
    suite.results["total_seconds"] = suite.elapsed()
    finish(suite)


if __name__ == "__main__":
    main()
