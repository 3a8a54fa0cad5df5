"""The SmolLM2 results of docs/decoders.md: head importance on IOI and greater-than, the heads'
connections, pruning curves, the effectiveness analysis and their figures (docs/figures/decoders-*).

    python benchmarks/decoders_smollm2.py attribute --data ioi --count 60 --nodes 2
    python benchmarks/decoders_smollm2.py attribute --data greater-than --count 40 --nodes 2
    python benchmarks/decoders_smollm2.py analyse --count 60 --gt-count 40 --eval-count 40 --step 30
    python benchmarks/decoders_smollm2.py lowlayers --nodes 2,4,8,16,32

`attribute` runs attattr over the prompts (objective: the set's metric, each prompt's own target and
foil; Gauss-Legendre with --nodes nodes) and appends one JSON line per prompt to
<ATTATTR_HOME>/benchmarks/decoders/attributions-<data>.jsonl (resumable: prompts already there are
skipped): the head-importance
table, each head's largest attention weight, the metric, and each head's attribution row of the
predicting position. `analyse` reads those files and computes the rest (Taylor importance, pruning
curves on a held-out split, effectiveness, rank correlation, figures), writing
benchmarks/results/decoders/results.json and docs/figures/decoders-*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from attattr import models, prompts
from attattr.core.engine import attribute_many
from attattr.core.files import write_json, write_text

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "results" / "decoders"  # the summaries (results.json, lowlayers.json)
# the per-prompt attributions (about 45 MB per 200 prompts) stay out of the repository
STORE = models.attattr_home() / "benchmarks" / "decoders"
FIGURES = ROOT / "docs" / "figures"
if os.environ.get("DECODERS_TRIAL"):  # a trial of `analyse`: figures and results elsewhere
    FIGURES = Path(os.environ["DECODERS_TRIAL"])
BATCH = 4


def _positions(tokens: list[str], word: str) -> list[int]:
    """Token positions of a name: 'ĠMary' after a space; at the start of the prompt, without the
    space, a name can take several tokens ('Em', 'ma')."""
    found = [i for i, t in enumerate(tokens) if t in ("Ġ" + word, word)]
    for j in range(2, 4):
        if 0 not in found and "".join(tokens[:j]) == word:
            found = list(range(j)) + found
    return found


def attribute(data: str, count: int, nodes: int, split: str) -> None:
    STORE.mkdir(parents=True, exist_ok=True)
    path = STORE / f"attributions-{data}.jsonl"
    done = set()
    if path.exists():
        done = {json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()}
    loaded = models.load("smollm2", quiet=True)
    prompt_set = prompts.check_tokens(prompts.load_prompts(data, split, count=count), loaded.tokenizer)
    todo = [ex for ex in prompt_set.examples if ex.id not in done]
    print(f"{data}: {len(done)} prompts done, {len(todo)} to go ({nodes} Gauss-Legendre nodes)", flush=True)
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        t0 = time.perf_counter()
        attrs = list(
            attribute_many(
                loaded.model,
                loaded.tokenizer,
                batch,
                target="gold",
                output=prompt_set.metric,
                steps=nodes,
                rule="gauss-legendre",
                batch_size=BATCH,
            )
        )
        seconds = time.perf_counter() - t0
        lines = []
        for ex, a in zip(batch, attrs, strict=True):
            d = a.decoder
            last = d["predicting_position"]
            record = {
                "id": ex.id,
                "prompt": ex.prompt,
                "target": ex.target,
                "foil": ex.foil,
                "info": ex.info,
                "tokens": a.tokens,
                "metric": a.output_value,
                "correct": a.output_value > 0,
                "top": d["top"][:3],
                "attattr": a.head_importance().tolist(),
                "attention": a.attentions[:, :, 1:].flatten(2).amax(dim=2).tolist(),
                "last_row": a.scores[:, :, last, :].tolist(),  # [layers, heads, key]
                "last_attention": a.attentions[:, :, last, :].tolist(),
                "completeness_gap": [float(g) for g in a.completeness_gaps()],
                "seconds": seconds / len(batch),
            }
            if data == "ioi":
                record["io_positions"] = _positions(a.tokens, ex.info["io"])
                record["s_positions"] = _positions(a.tokens, ex.info["subject"])
            lines.append(json.dumps(record) + "\n")
        with path.open("a") as f:
            f.write("".join(lines))
        print(
            f"  {len(done) + start + len(batch)}/{len(prompt_set)}  {seconds / len(batch):.1f} s/prompt",
            flush=True,
        )


IOI_SENTENCE = "When Mary and John went to the store, John gave a drink to"


def lowlayers(nodes: list[int]) -> None:
    """How fast the lowest layers' integrals converge on the IOI sentence: layers 0-2 with more and
    more Gauss-Legendre nodes; per count, each layer's completeness gap and head importance."""
    loaded = models.load("smollm2", quiet=True)
    out = {}
    for m in nodes:
        t0 = time.perf_counter()
        a = next(
            attribute_many(
                loaded.model,
                loaded.tokenizer,
                [IOI_SENTENCE],
                target=" Mary",
                foil=" John",
                layers=[0, 1, 2],
                steps=m,
                rule="gauss-legendre",
            )
        )
        out[m] = {
            "seconds": time.perf_counter() - t0,
            "completeness": a.completeness_table(),
            "importance": a.head_importance().tolist(),
        }
        gaps = ", ".join(f"{row['gap']:+.3f}" for row in out[m]["completeness"])
        print(f"{m} nodes: gaps {gaps}  ({out[m]['seconds']:.0f} s)", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    write_json(WORK / "lowlayers.json", out)


def _records(data: str, count: int) -> list[dict]:
    path = STORE / f"attributions-{data}.jsonl"
    if not path.exists() or count == 0:
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records[:count]


def analyse(count: int, gt_count: int, eval_count: int, step: int) -> None:
    from attattr.analyses.heads import correlate, pruning_curves
    from attattr.analyses.heads.importance import head_importance
    from attattr.core.encoding import predict_prompts
    from attattr.methods import Importance, gates_pruning, per_example_gates
    from attattr.render.plots.heads import (
        plot_correlation_pairs,
        plot_effectiveness,
        plot_importance,
        plot_pruning,
    )

    loaded = models.load("smollm2", quiet=True)
    model, tok = loaded.model, loaded.tokenizer
    ioi = _records("ioi", count)
    for r in ioi:  # name positions from the stored tokens (a name can also open the prompt)
        r["io_positions"] = _positions(r["tokens"], r["info"]["io"])
        r["s_positions"] = _positions(r["tokens"], r["info"]["subject"])
    gt = _records("greater-than", gt_count)
    ioi_set = prompts.load_prompts("ioi", "dev", count=len(ioi))
    assert [r["id"] for r in ioi] == [ex.id for ex in ioi_set.examples]
    results: dict = {"settings": {"ioi_prompts": len(ioi), "greater_than_prompts": len(gt)}}

    def importance(records, key, method, data):
        per = torch.tensor([r[key] for r in records], dtype=torch.float64)
        return Importance(per.mean(0), method, [r["id"] for r in records], {"data": data}, per_example=per)

    imp = {
        "attattr": importance(ioi, "attattr", "attattr", "ioi"),
        "attention": importance(ioi, "attention", "attention", "ioi"),
    }
    t0 = time.perf_counter()
    imp["taylor"] = head_importance(model, tok, ioi_set.examples, "taylor", batch_size=8)
    results["taylor_seconds"] = time.perf_counter() - t0
    print(f"taylor importance: {results['taylor_seconds']:.0f} s", flush=True)
    for seed in range(2):
        imp[f"random-{seed}"] = head_importance(model, tok, None, "random", seed=seed)
    gt_imp = importance(gt, "attattr", "attattr", "greater-than") if gt else None

    # importance heatmaps
    FIGURES.mkdir(parents=True, exist_ok=True)
    plot_importance(
        imp["attattr"],
        FIGURES / "decoders-ioi-importance",
        title=f"SmolLM2 head importance on IOI ({len(ioi)} prompts)",
    )
    if gt_imp is not None:
        plot_importance(
            gt_imp,
            FIGURES / "decoders-gt-importance",
            title=f"SmolLM2 head importance on greater-than ({len(gt)} prompts)",
        )
    heads = imp["attattr"].num_heads
    ranking = imp["attattr"].ascending().flip(0).tolist()
    results["ioi_top_heads"] = [
        {"layer": i // heads, "head": i % heads, "importance": float(imp["attattr"].scores.flatten()[i])}
        for i in ranking[:10]
    ]
    if gt_imp is not None:
        results["gt_top_heads"] = [
            {"layer": i // heads, "head": i % heads, "importance": float(gt_imp.scores.flatten()[i])}
            for i in gt_imp.ascending().flip(0).tolist()[:10]
        ]
    results["ioi_metric"] = {
        "mean": float(np.mean([r["metric"] for r in ioi])),
        "correct": int(sum(r["correct"] for r in ioi)),
        "seconds_per_prompt": float(np.mean([r["seconds"] for r in ioi])),
    }
    if gt:
        results["gt_metric"] = {
            "mean": float(np.mean([r["metric"] for r in gt])),
            "correct": int(sum(r["correct"] for r in gt)),
            "seconds_per_prompt": float(np.mean([r["seconds"] for r in gt])),
        }

    # where the top heads' attribution at the predicting position goes: IO name, S names, others
    connections = []
    for flat in ranking[:10]:
        layer, head = divmod(flat, heads)
        shares = {"io": [], "subject": [], "other": []}
        argmax_kind = {"io": 0, "subject": 0, "other": 0}
        attention = {"io": [], "subject": []}
        in_last_row = 0  # prompts whose largest entry of the head is in the predicting position's row
        for r in ioi:
            row = np.asarray(r["last_row"][layer][head])
            att = np.asarray(r["last_attention"][layer][head])
            io, s = r["io_positions"], r["s_positions"]
            total = np.abs(row).sum() or 1.0
            shares["io"].append(float(row[io].sum() / total))
            shares["subject"].append(float(row[s].sum() / total))
            shares["other"].append(float(np.delete(row, io + s).sum() / total))
            attention["io"].append(float(att[io].sum()))
            attention["subject"].append(float(att[s].sum()))
            best = int(np.argmax(row))
            argmax_kind["io" if best in io else "subject" if best in s else "other"] += 1
            in_last_row += float(row.max()) >= 0.999 * r["attattr"][layer][head]
        connections.append(
            {
                "layer": layer,
                "head": head,
                "importance": float(imp["attattr"].scores[layer, head]),
                "share": {k: float(np.mean(v)) for k, v in shares.items()},
                "strongest_key": argmax_kind,
                "max_in_last_row": in_last_row,
                "attention": {k: float(np.mean(v)) for k, v in attention.items()},
            }
        )
    results["ioi_connections"] = connections

    # every head's mean attribution from the predicting position to the IO name and to the S names
    io_score = np.zeros((imp["attattr"].num_layers, heads))
    s_score = np.zeros_like(io_score)
    io_attention = np.zeros_like(io_score)
    for r in ioi:
        row = np.asarray(r["last_row"])  # [layers, heads, key]
        att = np.asarray(r["last_attention"])
        io_score += row[:, :, r["io_positions"]].sum(-1) / len(ioi)
        s_score += row[:, :, r["s_positions"]].sum(-1) / len(ioi)
        io_attention += att[:, :, r["io_positions"]].sum(-1) / len(ioi)

    def ranked(table, largest=True, k=6):
        order = np.argsort(table.flatten())
        order = order[::-1] if largest else order
        return [
            {
                "layer": int(i // heads),
                "head": int(i % heads),
                "score": float(table.flatten()[i]),
                "attention_to_io": float(io_attention.flatten()[i]),
            }
            for i in order[:k]
        ]

    results["io_readers"] = ranked(io_score)
    results["io_negative"] = ranked(io_score, largest=False)
    results["s_readers"] = ranked(s_score)
    results["s_negative"] = ranked(s_score, largest=False)
    gaps = np.abs(np.asarray([r["completeness_gap"] for r in ioi]))  # [prompts, layers]
    results["completeness_mean_abs_gap"] = gaps.mean(0).tolist()
    upper = imp["attattr"].scores.clone()
    upper[:2] = float("-inf")  # the two lowest layers, whose integrals are the least accurate
    results["ioi_top_heads_above_layer_1"] = [
        {"layer": int(i // heads), "head": int(i % heads), "importance": float(upper.flatten()[i])}
        for i in upper.flatten().argsort(descending=True)[:10].tolist()
    ]
    _plot_connections(connections, len(ioi))

    # rank correlation of IOI and greater-than importance
    if gt_imp is not None:
        corr = correlate({"IOI": imp["attattr"], "greater-than": gt_imp})
        results["correlation"] = corr["pairs"]
        plot_correlation_pairs(corr, FIGURES / "decoders-ioi-vs-gt")
        # the same without layers 0 and 1, whose integrals do not converge (lowlayers)
        upper = {
            name: Importance(i.scores[2:], i.method, i.example_ids, i.settings)
            for name, i in (("IOI", imp["attattr"]), ("greater-than", gt_imp))
        }
        results["correlation_above_layer_1"] = correlate(upper)["pairs"]

    # pruning curves: importance from the dev prompts, evaluated on held-out test prompts
    eval_set = prompts.check_tokens(prompts.load_prompts("ioi", "test", count=eval_count), tok)
    t0 = time.perf_counter()
    pruning = pruning_curves(model, tok, eval_set.examples, imp, metric="logit-diff", eval_batch_size=50)
    pruning["seconds"] = time.perf_counter() - t0
    print(f"pruning curves: {pruning['seconds']:.0f} s", flush=True)
    results["pruning"] = pruning
    plot_pruning(
        pruning,
        FIGURES / "decoders-ioi-pruning",
        title=f"SmolLM2, IOI: heads pruned least important first ({len(ioi)} prompts for importance, "
        f"{eval_count} held out)",
    )

    # effectiveness (Fig. 2): each prompt's own heads, smallest or largest first
    total = imp["attattr"].num_layers * heads
    counts = list(range(0, total + 1, step)) + ([total] if total % step else [])
    curves = {}
    t0 = time.perf_counter()
    for key in ("attattr", "attention"):
        per = imp[key].per_example
        for order in ("smallest", "largest"):
            rows, row_examples = [], []
            for k in counts:
                rows.append(per_example_gates(per, k, largest=order == "largest"))
            gates = torch.cat(rows)  # [counts * prompts, layers, heads]
            examples = [ex for _ in counts for ex in ioi_set.examples]
            values, correct = predict_prompts(model, tok, examples, head_gates=gates, batch_size=50)
            values = values.view(len(counts), len(ioi)).mean(1)
            correct = correct.view(len(counts), len(ioi)).double().mean(1)
            curves[f"{key}-{order}"] = {"accuracy": correct.tolist(), "metric": values.tolist()}
            del row_examples
    effectiveness = {
        "counts": counts,
        "total_heads": total,
        "curves": curves,
        "examples": len(ioi),
        "settings": {"metric": "logit-diff"},
        "seconds": time.perf_counter() - t0,
    }
    print(f"effectiveness: {effectiveness['seconds']:.0f} s", flush=True)
    results["effectiveness"] = effectiveness
    plot_effectiveness(
        effectiveness,
        FIGURES / "decoders-ioi-effectiveness",
        title=f"SmolLM2, IOI: pruning each prompt's own heads ({len(ioi)} prompts)",
    )
    full = gates_pruning([], imp["attattr"].num_layers, heads)
    values, correct = predict_prompts(model, tok, eval_set.examples, head_gates=full)
    results["eval_unpruned"] = {"mean": float(values.mean()), "correct": int(correct.sum())}
    out = FIGURES if os.environ.get("DECODERS_TRIAL") else WORK
    write_json(out / "results.json", results)
    write_text(out / "summary.txt", json.dumps(_summary(results), indent=1))
    print(json.dumps(_summary(results), indent=1))


def _summary(results: dict) -> dict:
    pruning = results["pruning"]
    return {
        "ioi_top_heads": results["ioi_top_heads"][:5],
        "gt_top_heads": results.get("gt_top_heads", [])[:5],
        "correlation": _without_points(results.get("correlation")),
        "correlation_above_layer_1": _without_points(results.get("correlation_above_layer_1")),
        "pruning_mean_accuracy": pruning["mean_accuracy"],
        "pruning_mean_metric": pruning.get("mean_metric"),
        "connections": [
            {k: c[k] for k in ("layer", "head", "share", "strongest_key", "max_in_last_row", "attention")}
            for c in results["ioi_connections"][:5]
        ],
        "ioi_metric": results["ioi_metric"],
        "io_readers": results["io_readers"][:4],
        "s_readers": results["s_readers"][:4],
        "io_negative": results["io_negative"][:3],
        "top_above_layer_1": results["ioi_top_heads_above_layer_1"][:6],
        "completeness_mean_abs_gap": [round(g, 3) for g in results["completeness_mean_abs_gap"]],
        "gt_metric": results.get("gt_metric"),
    }


def _without_points(pairs: list[dict] | None) -> list[dict] | None:
    return None if pairs is None else [{k: v for k, v in p.items() if k not in ("x", "y")} for p in pairs]


def _plot_connections(connections: list[dict], prompts_used: int) -> None:
    import matplotlib.pyplot as plt

    from attattr.render.plots.style import save_figure

    labels = [f"L{c['layer']}H{c['head']}" for c in connections]
    io = [c["share"]["io"] for c in connections]
    subject = [c["share"]["subject"] for c in connections]
    other = [c["share"]["other"] for c in connections]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.bar(x - 0.27, io, 0.27, label="indirect object (IO) name", color="#1b9e77")
    ax.bar(x, subject, 0.27, label="subject (S) names", color="#d95f02")
    ax.bar(x + 0.27, other, 0.27, label="other tokens", color="#7570b3")
    ax.axhline(0, color="0.4", linewidth=0.6)
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of |attribution| (signed)")
    ax.set_xlabel("the 10 most important heads (IOI), in order")
    ax.set_title(f"Where the predicting position's attribution goes ({prompts_used} IOI prompts)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    save_figure(fig, FIGURES / "decoders-ioi-connections")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="stage", required=True)
    a = sub.add_parser("attribute")
    a.add_argument("--data", choices=["ioi", "greater-than"], required=True)
    a.add_argument("--count", type=int, default=60)
    a.add_argument("--nodes", type=int, default=2)
    a.add_argument("--split", default="dev")
    b = sub.add_parser("analyse")
    b.add_argument("--count", type=int, default=60)
    b.add_argument("--gt-count", type=int, default=40)
    b.add_argument("--eval-count", type=int, default=200)
    b.add_argument("--step", type=int, default=10)
    c = sub.add_parser("lowlayers")
    c.add_argument("--nodes", default="2,4,8,16,32")
    args = parser.parse_args()
    if args.stage == "attribute":
        attribute(args.data, args.count, args.nodes, args.split)
    elif args.stage == "lowlayers":
        lowlayers([int(x) for x in args.nodes.split(",")])
    else:
        analyse(args.count, args.gt_count, args.eval_count, args.step)


if __name__ == "__main__":
    main()
