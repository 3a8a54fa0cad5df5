"""Mining a dataset: one pattern per example, ranked by score sum (docs/triggers.md)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ...core.encoding import token_count
from ...core.errors import DataError, InputError
from .patterns import Pattern, mine_pattern, rank_patterns

MIN_TOKENS = 15  # inputs shorter than this (special tokens included) are skipped when mining
ORDERS = ("random", "first")  # which examples are mined: a seeded sample, or the first N


@dataclass
class MiningResult:
    patterns: list[Pattern]  # ranked by score sum, largest first
    considered: int  # examples looked at
    skipped: int  # of those, shorter than min_tokens
    settings: dict[str, Any] = field(default_factory=dict)


def mining_settings(
    model,
    tokenizer,
    dataset,
    *,
    examples: int,
    min_tokens: int,
    steps: int,
    rule: str,
    order: str = "random",
    seed: int = 0,
    model_id: str | None = None,
) -> dict[str, Any]:
    """What a mining run depends on; a resumed run must have the same (RunStore refuses otherwise)."""
    return {
        "task": "triggers-mine",
        "model_id": model_id or _model_id(model),
        "tokenizer": tokenizer_info(tokenizer),
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "examples": int(examples),
        "order": order,
        "seed": int(seed) if order == "random" else None,
        "min_tokens": int(min_tokens),
        "steps": int(steps),
        "rule": rule,
        "target": "predicted",
        "output": "prob",
    }


def mine_patterns(
    model,
    tokenizer,
    dataset,
    *,
    examples: int = 500,
    min_tokens: int = MIN_TOKENS,
    steps: int = 20,
    rule: str = "riemann-right",
    order: str = "random",
    seed: int = 0,
    batch_size: int = 8,
    store=None,
    progress: Callable[[int], None] | None = None,
    model_id: str | None = None,
    label_names: list[str] | None = None,
    dtype: torch.dtype | None = None,
) -> MiningResult:
    """Mine one pattern per example for `examples` examples of `dataset`.

    `order`: "random" (default) mines a seeded random sample of `examples` examples (kept in
    dataset order), "first" the first `examples` examples. The paper took the first 500 of SST-2's
    training set, whose order is already random; the built-in splits keep their source order, which
    for Rotten Tomatoes and IMDB puts every positive example before every negative one.
    Inputs with fewer than `min_tokens` tokens (special tokens included) are skipped. `store`: a
    `RunStore` (or a path for one) that makes the run resumable: finished examples are read back,
    not computed again. `progress(n)` is called as examples finish (skipped ones included).
    """
    from ...core.engine import attribute_many
    from ..runs import RunStore

    if examples < 1:
        raise InputError(f"examples must be >= 1, got {examples}")
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if min_tokens < 0:
        raise InputError(f"min_tokens must be >= 0, got {min_tokens}")
    model_id = model_id or _model_id(model)
    settings = mining_settings(
        model,
        tokenizer,
        dataset,
        examples=examples,
        min_tokens=min_tokens,
        steps=steps,
        rule=rule,
        order=order,
        seed=seed,
        model_id=model_id,
    )
    if store is not None and not isinstance(store, RunStore):
        store = RunStore(store, settings)
    chosen = [dataset[i] for i in sample_indices(len(dataset), examples, order=order, seed=seed)]
    if not chosen:
        raise DataError("the dataset has no examples to mine")
    label_names = label_names or getattr(dataset, "label_names", None)
    ids = [str(ex.id) for ex in chosen]
    if len(set(ids)) != len(ids):
        raise DataError("example ids are not unique; mining cannot resume reliably")
    records: dict[str, dict[str, Any]] = {}
    if store is not None:
        records.update({r["id"]: r for r in store.ordered(ids)})

    def finish(record: dict[str, Any]) -> None:
        records[record["id"]] = record
        if store is not None:
            store.append(record)

    if progress is not None and records:
        progress(len(records))  # finished in an earlier run
    todo = []
    for ex in chosen:
        if str(ex.id) in records:
            continue
        n = token_count(tokenizer, ex.text, ex.text_pair)
        if n < min_tokens:
            finish({"id": str(ex.id), "skipped": "short", "tokens": n, "pattern": None})
            if progress is not None:
                progress(1)
        else:
            todo.append(ex)
    if todo:
        results = attribute_many(
            model,
            tokenizer,
            todo,
            batch_size=batch_size,
            on_example=progress,
            target="predicted",
            output="prob",
            steps=steps,
            rule=rule,
            model_id=model_id,
            label_names=label_names,
            dtype=dtype,
        )
        for ex, attr in zip(todo, results, strict=True):
            if attr.example_id is None:
                attr.example_id = str(ex.id)
            pattern = mine_pattern(attr, tokenizer)
            finish(
                {
                    "id": str(ex.id),
                    "skipped": None,
                    "tokens": attr.num_tokens,
                    "pattern": pattern.to_dict() if pattern else None,
                }
            )
    ordered = [records[i] for i in ids]
    patterns = [Pattern.from_dict(r["pattern"]) for r in ordered if r.get("pattern")]
    patterns = rank_patterns(patterns)
    skipped = sum(1 for r in ordered if r.get("skipped"))
    return MiningResult(patterns=patterns, considered=len(chosen), skipped=skipped, settings=settings)


def sample_indices(size: int, examples: int, *, order: str = "random", seed: int = 0) -> list[int]:
    """Indices of the examples to mine, in dataset order: the first `examples`, or a seeded sample."""
    k = min(examples, size)
    if order == "first":
        return list(range(k))
    return sorted(random.Random(seed).sample(range(size), k))


def tokenizer_info(tokenizer) -> dict[str, Any]:
    return {"name": str(getattr(tokenizer, "name_or_path", "") or ""), "vocab_size": len(tokenizer)}


def _model_id(model) -> str:
    return str(getattr(model.config, "name_or_path", "") or type(model).__name__)
