"""Effectiveness of per-example head orderings (docs/method.md §2a, the paper's Fig. 2): per example, prune
its k least (or most) important heads by its own attribution (gold label) or by its own max
attention weight; accuracy and mean gold-label probability against k. A resumable run: one record
per example with its four curves. A causal LM's prompts are scored by their metric instead of the
gold label's probability (the curves' "metric"; accuracy: the metric above 0)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...core.encoding import predict, predict_prompts
from ...core.hooks import model_num_heads, model_num_layers
from ...core.quadrature import summarise_integration
from ...methods.attribution import attribution_records
from ...methods.base import pairs_or_none
from ...methods.gates import mask_key, per_example_gates
from ..runs import Executor, Job, RunExample, check_count, register_shard_function, run
from .importance import (
    ProgressFn,
    StoreArg,
    check_importance_options,
    integration_info,
    run_examples,
    store_for,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

KIND = "heads.effectiveness"
CURVES = ("attattr-smallest", "attattr-largest", "attention-smallest", "attention-largest")


def prune_counts(total: int, step: int) -> list[int]:
    """0, step, 2*step, ... and always `total` itself."""
    check_count(step, "step")
    counts = list(range(0, total + 1, step))
    if counts[-1] != total:
        counts.append(total)
    return counts


@register_shard_function(KIND)
def effectiveness_shard(model, tokenizer, examples: Sequence[RunExample], job: Job) -> list[dict[str, Any]]:
    """Per example: its attribution record plus, for each ordering and each k, whether the
    prediction with those heads pruned is right and the gold label's probability."""
    s = job.settings
    counts = prune_counts(model_num_layers(model) * model_num_heads(model), s["step"])
    records = attribution_records(
        model,
        tokenizer,
        examples,
        steps=s["steps"],
        rule=s["rule"],
        dtype=s["dtype"],
        memory_budget=job.options.get("memory_budget"),
        metric=s.get("metric"),
        tol=s.get("tol"),
    )
    # one row per distinct (example, pruned set): k = 0 and k = all are shared by the four curves
    rows_gates: list[torch.Tensor] = []
    rows_example: list[int] = []
    where: list[dict[str, list[int]]] = []
    for b, record in enumerate(records):
        seen: dict[str, int] = {}
        slots: dict[str, list[int]] = {}
        for curve in CURVES:
            scores = torch.tensor(record[curve.split("-")[0]], dtype=torch.float64)[
                None
            ]  # [1, layers, heads]
            slots[curve] = []
            for k in counts:
                g = per_example_gates(scores, k, largest=curve.endswith("largest"))[0]
                key = mask_key(g)
                if key not in seen:
                    seen[key] = len(rows_gates)
                    rows_gates.append(g)
                    rows_example.append(b)
                slots[curve].append(seen[key])
        where.append(slots)
    rows = [examples[b] for b in rows_example]
    if s.get("metric") is not None:  # a causal LM: each prompt's metric with the heads pruned
        values, correct = predict_prompts(
            model,
            tokenizer,
            rows,
            output=s["metric"],
            batch_size=job.options.get("eval_batch_size", 64),
            head_gates=torch.stack(rows_gates),
        )
        for b, record in enumerate(records):
            record["curves"] = {
                curve: {
                    "correct": [bool(correct[r]) for r in where[b][curve]],
                    "metric": [float(values[r]) for r in where[b][curve]],
                }
                for curve in CURVES
            }
        return records
    probs = predict(
        model,
        tokenizer,
        [x.text for x in rows],
        pairs_or_none(rows),
        batch_size=job.options.get("eval_batch_size", 64),
        head_gates=torch.stack(rows_gates),
    )
    for b, record in enumerate(records):
        label = examples[b].label
        record["curves"] = {
            curve: {
                "correct": [bool(probs[r].argmax() == label) for r in where[b][curve]],
                "probability": [float(probs[r, label]) for r in where[b][curve]],
            }
            for curve in CURVES
        }
    return records


def merge_effectiveness(records: Sequence[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    """Mean accuracy and gold-label probability (a causal LM: the metric) per curve and k, and the
    summary of the gaps."""
    curves = {}
    for curve in CURVES:
        correct = np.array([r["curves"][curve]["correct"] for r in records], dtype=np.float64)
        key = "metric" if records and "metric" in records[0]["curves"][curve] else "probability"
        values = np.array([r["curves"][curve][key] for r in records], dtype=np.float64)
        curves[curve] = {"accuracy": correct.mean(0).tolist(), key: values.mean(0).tolist()}
    return {"curves": curves, "summary": effectiveness_summary(counts, curves)}


def effectiveness(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable,
    *,
    step: int = 4,
    batch_size: int = 8,
    eval_batch_size: int = 64,
    steps: int | str | None = None,
    rule: str | None = None,
    tol: float | None = None,
    dtype: str | None = None,
    preset: str | None = None,
    memory_budget: int | None = None,
    store: StoreArg = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    on_example: ProgressFn | None = None,
    settings: dict[str, Any] | None = None,
    executor: Executor | None = None,
    model_source: str | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Returns {"counts": [k...], "curves": {curve: {"accuracy": [...], "probability": [...]}},
    "examples": N, "example_ids": [...], "settings": {...}, "summary": {...}}.
    steps, rule, tol, dtype, preset: the integration, as for `head_importance` (default: the
        error-controlled mode; preset "paper" = steps=20, rule="riemann-right").
    store / runs_dir / fresh: as for `head_importance` (file `effectiveness-<hash>.jsonl`).
    A causal LM: prompts with targets, scored by `metric` (default by their targets); the curves
    hold "metric" (its mean) instead of "probability", and the result names it ("metric")."""
    integration = integration_info(
        check_importance_options(
            "attattr",
            steps=steps,
            rule=rule,
            tol=tol,
            dtype=dtype,
            preset=preset,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
        )
    )
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    counts = prune_counts(num_layers * num_heads, step)
    items, metric = run_examples(model, examples, metric)
    context = dict(settings or {})
    if metric is not None:
        context["metric"] = metric
    job = Job(
        KIND,
        {
            **context,
            "examples": [x.id for x in items],
            "step": step,
            "batch_size": batch_size,
            **integration,
        },
        {"eval_batch_size": eval_batch_size, "memory_budget": memory_budget},
    )
    model.eval()
    records = run(
        job,
        items,
        model=model,
        tokenizer=tokenizer,
        store=store_for(job, store, runs_dir, "effectiveness", fresh),
        executor=executor,
        batch_size=batch_size,
        progress=on_example,
        model_source=model_source,
    )
    merged = merge_effectiveness(records, counts)
    nodes = summarise_integration(records, integration.get("tol"))
    return {
        "kind": "effectiveness",
        "counts": counts,
        "total_heads": num_layers * num_heads,
        "curves": merged["curves"],
        "examples": len(records),
        "example_ids": [r["id"] for r in records],
        "settings": {
            **context,
            "step": step,
            **integration,
            "batch_size": batch_size,
            **({"integration": nodes} if nodes is not None else {}),
        },
        "summary": merged["summary"],
    }


def effectiveness_summary(counts: list[int], curves: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Area under each accuracy curve (mean accuracy over k) and the gap smallest-first minus
    largest-first per ordering: a larger gap = an ordering that better separates heads."""
    x = np.asarray(counts, dtype=np.float64)
    span = x[-1] - x[0] if len(x) > 1 else 1.0
    area = {c: float(np.trapezoid(v["accuracy"], x) / span) for c, v in curves.items()}
    return {
        "mean_accuracy": area,
        "gap_attattr": area["attattr-smallest"] - area["attattr-largest"],
        "gap_attention": area["attention-smallest"] - area["attention-largest"],
    }
