"""The benchmark suite (`make bench`): attattr's engine against the paper's algorithm and Captum.

    python benchmarks/run.py                 # everything, about 18 minutes on 2 idle cores
    python benchmarks/run.py --only w1,w3    # a subset (sections: peak, nodes, bf16, w1, w2, w3,
                                             # smollm2, smollm2-scale)
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

SECTIONS = ("peak", "nodes", "bf16", "w1", "w2", "w3", "smollm2", "smollm2-scale")
# CPU flags the table records: which vector and matrix units the bf16/fp32 kernels can use
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
TOLS = (3e-2, 1e-2, 3e-3)  # the node study's tolerances for the default mode


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


def _integration(attr) -> dict:
    """What an attribution records about its integration, for the report."""
    return {
        "nodes": attr.steps,
        "rule": attr.rule,
        "dtype": attr.dtype,
        "tol": attr.tol,
        "integration": attr.integration,
        "output_value": attr.output_value,
        "baseline_values": attr.baseline_values,
    }


def task_w1(cfg: dict) -> dict:
    """W1/W2: one input of `tokens` tokens on the BERT-base-shaped model, one method. Engine runs
    take `options` (attattr.attribute's keywords: {} is the default, error-controlled mode)."""
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
                model, tok, text, memory_budget=cfg.get("memory_budget"), **cfg.get("options", {})
            )
            scores = attr.scores
            record.update(_integration(attr))
        times.append(time.perf_counter() - t0)
        _log(f"{cfg['name']}: run {run + 1}/{cfg['runs']} {times[-1]:.1f} s")
        if sum(times) > cfg.get("max_seconds", 1e9):
            break
    if method == "engine":
        budget = cfg.get("memory_budget") or default_memory_budget(torch.device("cpu"))
        record.update(memory_budget=budget)
        if record["tol"] is None:  # a fixed rule: its passes are planned up front
            dtype = torch.bfloat16 if record["dtype"] == "bfloat16" else None
            passes = plan_passes(list(range(12)), record["nodes"], 12, 1, cfg["tokens"], model, budget, dtype)
            record.update(passes=len(passes))
    else:
        record.update(nodes=cfg["steps"], rule="riemann-right", dtype="float32", tol=None, integration=None)
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
        tokens, nodes = [], []
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
            options = {"target": "gold", **cfg.get("options", {})}
            for attr in attattr.attribute_many(
                model, tok, examples, batch_size=cfg["batch_size"], model_id=loaded.model_id, **options
            ):
                importance += attr.head_importance()
                tokens.append(len(attr.tokens))
                nodes.append([r["nodes"] for r in attr.integration])
                if len(kept) < keep:
                    kept.append(attr.scores)
                record.update(rule=attr.rule, dtype=attr.dtype, tol=attr.tol)
            record.update(nodes_per_layer=nodes, nodes=max(max(x) for x in nodes))
        times.append(time.perf_counter() - t0)
        _log(f"{cfg['name']}: run {run + 1}/{cfg['runs']} {times[-1]:.1f} s ({len(examples)} examples)")
        if sum(times) > cfg.get("max_seconds", 1e9):
            break
    if cfg["method"] == "paper":
        record.update(nodes=cfg["steps"], rule="riemann-right", dtype="float32", tol=None)
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


def _layer_errors(a, ref) -> list[float]:
    """Per layer: the relative Frobenius error of that layer's scores."""
    return [_relative_error(a[i], ref[i]) for i in range(ref.shape[0])]


def task_nodes(cfg: dict) -> dict:
    """The node study on the default model over the first K dev sentences (gold label): the paper's
    rule, Gauss-Legendre with a few nodes and the error-controlled default at several tolerances,
    each against a many-node reference, per sentence and per layer."""
    import attattr

    loaded = _default_model()
    model, tok = loaded.model, loaded.tokenizer
    examples = _rt_examples(cfg["examples"])

    def run(options):
        t0 = time.perf_counter()
        out = list(
            attattr.attribute_many(model, tok, examples, target="gold", batch_size=len(examples), **options)
        )
        return out, time.perf_counter() - t0

    reference, t_ref = run({"rule": "gauss-legendre", "steps": cfg["reference_nodes"]})
    _log(f"nodes: reference GL-{cfg['reference_nodes']} {t_ref:.1f} s")
    rows = []
    for candidate in cfg["candidates"]:
        got, seconds = run(candidate["options"])
        errors = [_relative_error(g.scores, r.scores) for g, r in zip(got, reference, strict=True)]
        layer_errors = [_layer_errors(g.scores, r.scores) for g, r in zip(got, reference, strict=True)]
        gaps = [float(g.completeness_gaps().abs().max()) for g in got]
        flat = [e for per in layer_errors for e in per]
        row = {
            "name": candidate["name"],
            "rule": got[0].rule,
            "nodes": got[0].steps,
            "tol": got[0].tol,
            "seconds": seconds,
            "errors": errors,
            "layer_errors": layer_errors,
            "mean_error": statistics.mean(errors),
            "median_error": statistics.median(errors),
            "max_error": max(errors),
            "layer_max_error": max(flat),
            "layer_mean_error": statistics.mean(flat),
            "max_gap": max(gaps),
            "mean_gap": statistics.mean(gaps),
        }
        if got[0].tol is not None:
            row["integration"] = [g.integration for g in got]
        rows.append(row)
        _log(f"nodes: {candidate['name']}: mean relative error {row['mean_error']:.2e} ({seconds:.1f} s)")
    ref_gaps = [float(r.completeness_gaps().abs().max()) for r in reference]
    return {
        "examples": len(examples),
        "model_id": loaded.model_id,
        "reference_nodes": cfg["reference_nodes"],
        "reference_seconds": t_ref,
        "reference_max_gap": max(ref_gaps),
        "rows": rows,
        "mean_tokens": statistics.mean(len(r.tokens) for r in reference),
    }


def task_bf16(cfg: dict) -> dict:
    """dtype="auto" of the default mode against a Gauss-Legendre reference, per layer, on the node
    study's sentences: where bf16 is fast, each layer keeps bf16 only where its estimate allows."""
    import attattr

    loaded = _default_model()
    model, tok = loaded.model, loaded.tokenizer
    examples = _rt_examples(cfg["examples"])
    reference = list(
        attattr.attribute_many(
            model, tok, examples, target="gold", rule="gauss-legendre", steps=cfg["reference_nodes"]
        )
    )
    t0 = time.perf_counter()
    got = list(attattr.attribute_many(model, tok, examples, target="gold", dtype="auto"))
    seconds = time.perf_counter() - t0
    return {
        "examples": len(examples),
        "seconds": seconds,
        "layer_errors": [_layer_errors(g.scores, r.scores) for g, r in zip(got, reference, strict=True)],
        "integration": [g.integration for g in got],
    }


def task_smollm2(cfg: dict) -> dict:
    """SmolLM2-135M on IOI prompts, F = logit(target) - logit(foil): the default mode per layer
    (nodes, subintervals, estimate, converged) and the paper's rule's completeness gaps."""
    import attattr
    from attattr.models import load
    from attattr.prompts import generate_ioi

    loaded = load("smollm2", quiet=False)
    model, tok = loaded.model, loaded.tokenizer
    prompts = generate_ioi(cfg["prompts"]).examples
    out = {"prompts": [], "model_id": loaded.model_id}
    for p in prompts:
        options = {"target": p.target, "foil": p.foil, "output": "logit-diff"}
        t0 = time.perf_counter()
        default = attattr.attribute(model, tok, p.prompt, **options)
        t_default = time.perf_counter() - t0
        t0 = time.perf_counter()
        paper = attattr.attribute(model, tok, p.prompt, rule="riemann-right", steps=20, **options)
        t_paper = time.perf_counter() - t0
        delta = [default.output_value - b for b in default.baseline_values]
        out["prompts"].append(
            {
                "prompt": p.prompt,
                "F": default.output_value,
                "default_seconds": t_default,
                "paper_seconds": t_paper,
                "integration": default.integration,
                "default_gaps": default.completeness_gaps().tolist(),
                "paper_gaps": paper.completeness_gaps().tolist(),
                "layer_deltas": delta,
                "default_vs_paper": _layer_errors(paper.scores, default.scores),
            }
        )
        _log(f"smollm2: {p.prompt!r}: default {t_default:.0f} s, paper's rule {t_paper:.0f} s")
    return out


def _smollm2_prompt(tok, tokens: int):
    """An IOI prompt of about `tokens` tokens: earlier IOI sentences as context, the demo sentence
    last (target " Mary", foil " John"), so that F means the same at every length."""
    from attattr.prompts import generate_ioi

    last = "When Mary and John went to the store, John gave a drink to"
    context = " ".join(p.prompt + p.target + "." for p in generate_ioi(200).examples)
    room = tokens - len(tok(last)["input_ids"])
    if room <= 0:
        return last
    ids = tok(context)["input_ids"][:room]
    return tok.decode(ids).strip() + " " + last


def task_smollm2_scale(cfg: dict) -> dict:
    """SmolLM2-135M at `tokens` tokens, F = logit(" Mary") - logit(" John") at the last position:
    the paper's algorithm (`method` "paper") or attattr with `options`; time and peak memory."""
    import torch

    import attattr
    from attattr.models import load

    loaded = load("smollm2", quiet=True)
    model, tok = loaded.model, loaded.tokenizer
    text = _smollm2_prompt(tok, cfg["tokens"])
    target, foil = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" Mary", " John"))
    if cfg["method"] == "engine":  # one-off costs (finding the layer modules) are not timed
        attattr.attribute(model, tok, "a warm up", rule="gauss-legendre", steps=1)
    rss_setup = _rss_now()
    t0 = time.perf_counter()
    record: dict = {}
    if cfg["method"] == "paper":
        from paper_baseline import paper_attribution

        inputs = dict(tok(text, return_tensors="pt"))
        scores = paper_attribution(
            model,
            inputs,
            steps=cfg["steps"],
            objective=lambda logits: logits[:, -1, target] - logits[:, -1, foil],  # [m]
        )
        n = inputs["input_ids"].shape[1]
        record.update(nodes=cfg["steps"], rule="riemann-right")
    else:
        attr = attattr.attribute(
            model, tok, text, target=" Mary", foil=" John", output="logit-diff", **cfg["options"]
        )
        scores, n = attr.scores, len(attr.tokens)
        record.update(_integration(attr))
        record["completeness_gaps"] = attr.completeness_gaps().tolist()
    seconds = time.perf_counter() - t0
    _log(f"{cfg['name']}: {n} tokens, {seconds:.1f} s")
    if cfg.get("save"):
        torch.save(scores, cfg["save"])
    return {**record, "times": [seconds], "tokens": n, "rss_setup": rss_setup, "rss_peak": _rss_peak()}


TASKS = {
    "peak": task_peak,
    "w1": task_w1,
    "w3": task_w3,
    "nodes": task_nodes,
    "bf16": task_bf16,
    "smollm2": task_smollm2,
    "smollm2-scale": task_smollm2_scale,
}


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
    isa = [f for f in ISA_FLAGS if f" {f}" in flags + " "]
    from attattr.core.engine import bf16_is_fast

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
        "bf16_fast": bf16_is_fast(torch.device("cpu")),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
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
        "--w1-tokens", type=int, default=64, help="W1's input length (the workload is defined at 64)"
    )
    parser.add_argument(
        "--reference-check-nodes", type=int, default=32, help="a smaller reference, to show convergence"
    )
    parser.add_argument("--node-examples", type=int, default=8, help="dev sentences for the node study")
    parser.add_argument("--bf16-examples", type=int, default=8)
    parser.add_argument("--w3-examples", type=int, default=200)
    parser.add_argument("--w3-baseline-examples", type=int, default=8)
    parser.add_argument(
        "--w3-batch-size", type=int, default=8, help="attribute_many's batch_size (its default)"
    )
    parser.add_argument("--smollm2-prompts", type=int, default=4, help="IOI prompts on SmolLM2")
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
        args.node_examples, args.bf16_examples = 2, 2
        args.w3_examples, args.w3_baseline_examples = 8, 1
        args.w1_tokens, args.smollm2_prompts = 32, 1
    if args.quick or args.w1_tokens != 64 or args.only != ",".join(SECTIONS):
        if args.out == str(HERE / "results"):  # partial or smoke runs never overwrite the real results
            args.out = str(Path(tempfile.gettempdir()) / "attattr-bench-partial")

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
    from attattr.core.quadrature import DEFAULT_TOL, preset_options
    from report import finish

    suite.results["machine"] = machine_info(args.threads)
    suite.results["settings"] = {k: v for k, v in vars(args).items() if k not in ("worker", "result")}
    suite.results["default_tol"] = DEFAULT_TOL
    bf16_fast = suite.results["machine"]["bf16_fast"]

    if "peak" in sections:
        for dtype in ("float32", "bfloat16"):
            suite.run(f"peak-{dtype}", "peak", dtype=dtype, size=512 if args.quick else 2048, reps=5)

    if "nodes" in sections:
        candidates = [
            {"name": "paper's rule (riemann-right 20)", "options": {"rule": "riemann-right", "steps": 20}}
        ]
        candidates += [
            {"name": f"gauss-legendre {n}", "options": {"rule": "gauss-legendre", "steps": n}}
            for n in range(1, 7)
        ]
        candidates += [{"name": f"default, tol {tol:g}", "options": {"tol": tol}} for tol in TOLS]
        candidates.append(
            {
                "name": f"gauss-legendre {args.reference_check_nodes} (reference check)",
                "options": {"rule": "gauss-legendre", "steps": args.reference_check_nodes},
            }
        )
        suite.run(
            "nodes",
            "nodes",
            examples=args.node_examples,
            reference_nodes=args.reference_nodes,
            candidates=candidates,
        )

    if "bf16" in sections:
        if bf16_fast:
            suite.run("bf16", "bf16", examples=args.bf16_examples, reference_nodes=args.reference_nodes)
        else:  # dtype="auto" is fp32 here: nothing to measure
            suite.results["configs"]["bf16"] = {
                "skipped": "no fast bf16 kernels (AVX512-BF16, AMX) on this CPU"
            }

    if "w1" in sections:
        common = {"tokens": args.w1_tokens}
        suite.run(
            "w1-reference",
            "w1",
            **common,
            method="engine",
            options={"rule": "gauss-legendre", "steps": args.w1_reference_nodes},
            runs=1,
            save=suite.path("w1-reference"),
        )
        slow = {"runs": args.baseline_runs, "steps": 20, "max_seconds": args.slow_seconds}
        engine_runs = {**common, "method": "engine", "runs": args.runs}
        specs = [
            ("w1-paper", "w1", {**common, **slow, "method": "paper", "save": suite.path("w1-paper")}),
            ("w1-captum", "w1", {**common, **slow, "method": "captum", "save": suite.path("w1-captum")}),
            (
                "w1-preset",
                "w1",
                {**engine_runs, "options": {"preset": "paper"}, "save": suite.path("w1-preset")},
            ),
            ("w1-default", "w1", {**engine_runs, "options": {}, "save": suite.path("w1-default")}),
        ]
        if bf16_fast:  # dtype="auto" differs from the default only where bf16 is fast
            specs.append(
                (
                    "w1-auto",
                    "w1",
                    {**engine_runs, "options": {"dtype": "auto"}, "save": suite.path("w1-auto")},
                )
            )
        suite.interleaved(specs)

    if "w2" in sections:
        for tokens in (128, 512):
            if args.quick:
                tokens = tokens // 4
            suite.run(
                f"w2-default-{tokens}",
                "w1",
                tokens=tokens,
                method="engine",
                options={"dtype": "auto"},
                runs=args.runs,
                max_seconds=args.slow_seconds if tokens >= 512 else 1e9,
            )

    if "w3" in sections:
        few = args.w3_baseline_examples
        stride = max(1, args.w3_examples // few)
        suite.interleaved(
            [
                (
                    "w3-default",
                    "w3",
                    {
                        "method": "engine",
                        "options": {},
                        "examples": args.w3_examples,
                        "batch_size": args.w3_batch_size,
                        "runs": args.runs,
                        "keep": few,
                        "save": suite.path("w3-default"),
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
                    "w3-preset",
                    "w3",
                    {
                        "method": "engine",
                        # the paper's pruning importance: right Riemann 20, fp32, gold label
                        "options": preset_options("paper", "pruning"),
                        "examples": stride * few,
                        "stride": stride,
                        "batch_size": args.w3_batch_size,
                        "runs": args.runs,
                        "keep": few,
                        "save": suite.path("w3-preset"),
                    },
                ),
            ]
        )

    if "smollm2" in sections:
        suite.run("smollm2", "smollm2", prompts=args.smollm2_prompts)

    if "smollm2-scale" in sections:
        # the paper's algorithm and attattr with the paper's rule on the 20-token prompt (same numbers),
        # then time and memory at 20, 128 and 512 tokens with two Gauss-Legendre nodes per layer (the
        # error-controlled default spends hundreds of nodes on SmolLM2's rough layers 0-1: see the
        # SmolLM2 section; two nodes are what docs/decoders.md's dataset runs use)
        short = 10 if args.quick else 20
        paper_rule = {"rule": "riemann-right", "steps": 20}
        suite.run(
            "smollm2-paper",
            "smollm2-scale",
            tokens=short,
            method="paper",
            steps=20,
            save=suite.path("smollm2-paper"),
        )
        suite.run(
            "smollm2-rule",
            "smollm2-scale",
            tokens=short,
            method="engine",
            options=paper_rule,
            save=suite.path("smollm2-rule"),
        )
        for tokens in (short, 128, 512) if not args.quick else (short, 32):
            suite.run(
                f"smollm2-gl2-{tokens}",
                "smollm2-scale",
                tokens=tokens,
                method="engine",
                options={"rule": "gauss-legendre", "steps": 2},
            )

    if "peak" in sections and not args.quick:  # again at the end: the best of both is the peak
        for dtype in ("float32", "bfloat16"):
            suite.run(f"peak-{dtype}-end", "peak", dtype=dtype, size=2048, reps=5)

    suite.results["machine"]["load_average_end"] = os.getloadavg()
    suite.results["total_seconds"] = suite.elapsed()
    finish(suite)


if __name__ == "__main__":
    main()
