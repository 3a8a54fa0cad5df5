"""Mining a dataset: one pattern per example, ranked by score sum (docs/triggers.md), through the
one dataset runner (`attattr.analyses.runs`, job kind "triggers.mine")."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...core.encoding import token_count
from ...core.errors import DataError, InputError
from ...core.quadrature import integration_record, integration_settings, summarise_integration
from ..runs import (
    FORMAT,
    Executor,
    Job,
    MemoryStore,
    RunExample,
    as_examples,
    open_store,
    register_shard_function,
    run,
    run_file,
)
from .attack import match_labels
from .patterns import Pattern, mine_pattern, rank_patterns

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MIN_TOKENS = 15  # inputs shorter than this (special tokens included) are skipped when mining
ORDERS = ("random", "first")  # which examples are mined: a seeded sample, or the first N
MINE_KIND = "triggers.mine"  # the dataset runner's job kind (a registered shard function)
RUN_NAME = "triggers-mine"  # run files: <runs_dir>/triggers-mine-<settings hash>.jsonl


@dataclass
class MiningResult:
    patterns: list[Pattern]  # ranked by score sum, largest first
    considered: int  # examples looked at
    skipped: int  # of those, shorter than min_tokens
    settings: dict[str, Any] = field(default_factory=dict)
    # the error-controlled mode: nodes per layer and layers that missed tol (`summarise_integration`)
    integration: dict[str, Any] | None = None


def mining_settings(
    model,
    tokenizer,
    dataset,
    *,
    examples: int,
    min_tokens: int,
    steps: int | str | None = None,
    rule: str | None = None,
    order: str = "random",
    seed: int = 0,
    model_id: str | None = None,
    tol: float | None = None,
    dtype: torch.dtype | str | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """What a mining run depends on; a resumed run must have the same (RunStore refuses otherwise).
    The integration options mean what they mean to `mine_patterns`; recorded as steps and rule,
    tol in the error-controlled mode and dtype unless float32 (the form of earlier runs)."""
    integration = integration_settings(
        steps=steps, rule=rule, tol=tol, dtype=dtype, preset=preset, analysis="triggers"
    )
    settings = {
        "task": "triggers-mine",
        "model_id": model_id or _model_id(model),
        "tokenizer": tokenizer_info(tokenizer),
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "examples": int(examples),
        "order": order,
        "seed": int(seed) if order == "random" else None,
        "min_tokens": int(min_tokens),
        "steps": integration["steps"],
        "rule": integration["rule"],
        "target": "predicted",
        "output": "prob",
    }
    for key in ("tol", "dtype"):
        if integration.get(key) is not None:
            settings[key] = integration[key]
    return settings


def mine_patterns(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Sequence[Any],
    *,
    examples: int = 500,
    min_tokens: int = MIN_TOKENS,
    steps: int | str | None = None,
    rule: str | None = None,
    order: str = "random",
    seed: int = 0,
    batch_size: int = 8,
    store: MemoryStore | str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    resume_from: str | os.PathLike | None = None,
    settings: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    model_id: str | None = None,
    label_names: list[str] | None = None,
    dtype: torch.dtype | str | None = None,
    executor: Executor | None = None,
    model_source: str | None = None,
    tol: float | None = None,
    preset: str | None = None,
) -> MiningResult:
    """Mine one pattern per example for `examples` examples of `dataset`.

    `order`: "random" (default) mines a seeded random sample of `examples` examples (kept in
    dataset order), "first" the first `examples` examples. The paper took the first 500 of SST-2's
    training set, whose order is already random; the built-in splits keep their source order, which
    for Rotten Tomatoes and IMDB puts every positive example before every negative one.
    Inputs with fewer than `min_tokens` tokens (special tokens included) are skipped.

    `steps`, `rule`, `tol`, `dtype`: the integration, as `attattr.attribute` reads them: by default
    the error-controlled mode (steps="auto", tol `quadrature.DEFAULT_TOL`); steps=N alone: right
    Riemann with N nodes; a rule alone: 20 nodes. `preset`: "paper" (the same as steps=20,
    rule="riemann-right") or "authors" (the authors' released code: steps=64, rule="riemann-left");
    other options may repeat what it fixes, not contradict it. The target is the predicted class.

    The examples run through the dataset runner (`attattr.analyses.runs`) as the job
    "triggers.mine": shards of up to `batch_size` examples of similar length, each shard's records
    appended to the run's store as soon as it is done. Where records go and resume from:
    `store`, a `RunStore` or a path for one; or `runs_dir`, a folder where the run file is named by
    the settings (`triggers-mine-<hash>.jsonl`, so runs with other settings sit side by side);
    neither: memory (not resumable). Finished examples are read back, not computed again;
    `fresh=True` starts over. `resume_from`: an older run file (the `<patterns>.run.jsonl` of
    earlier versions) that is continued instead when its settings are this run's and the
    settings-named file does not exist yet. `settings`: extra settings recorded with the run (data
    columns, ...). `progress(n)` is called as examples finish (skipped ones included). With the
    model's `label_names`, a `data.Dataset`'s gold labels are checked against them
    (`attack.match_labels`). `executor`, `model_source`: where the shards run (default: in this
    process; a Ray executor loads the model on its workers from `model_source`, a recipe or folder).
    """
    if examples < 1:
        raise InputError(f"examples must be >= 1, got {examples}")
    if order not in ORDERS:
        raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if min_tokens < 0:
        raise InputError(f"min_tokens must be >= 0, got {min_tokens}")
    if len(dataset) == 0:
        raise DataError("the dataset has no examples to mine")
    model_id = model_id or _model_id(model)
    run_settings = mining_settings(
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
        tol=tol,
        dtype=dtype,
        preset=preset,
    )
    run_settings.update(settings or {})
    dataset = match_labels(dataset, label_names, int(model.config.num_labels))
    names = label_names or getattr(dataset, "label_names", None)
    job = Job(MINE_KIND, run_settings, options={"label_names": list(names) if names else None})
    store = mining_store(job, store=store, runs_dir=runs_dir, fresh=fresh, resume_from=resume_from)
    items = as_examples(dataset)
    chosen = [items[i] for i in sample_indices(len(items), examples, order=order, seed=seed)]
    records = run(
        job,
        chosen,
        model=model,
        tokenizer=tokenizer,
        store=store,
        executor=executor,
        batch_size=batch_size,
        progress=progress,
        model_source=model_source,
    )
    patterns = rank_patterns(Pattern.from_dict(r["pattern"]) for r in records if r.get("pattern"))
    skipped = sum(1 for r in records if r.get("skipped"))
    return MiningResult(
        patterns=patterns,
        considered=len(chosen),
        skipped=skipped,
        settings=job.settings,
        integration=summarise_integration(records, job.settings.get("tol")),
    )


@register_shard_function(MINE_KIND)
def mine_shard(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[RunExample],
    job: Job,
) -> list[dict[str, Any]]:
    """The records of one shard of a mining run, in shard order: {"id", "skipped" ("short" or
    None), "tokens", "pattern" (a `Pattern.to_dict()` or None)}."""
    from ...core import engine  # looked up at call time, so a test can watch the engine's calls

    s = job.settings
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for ex in examples:
        n = token_count(tokenizer, ex.text, ex.text_pair)
        if n < s["min_tokens"]:
            records[ex.id] = {"id": ex.id, "skipped": "short", "tokens": n, "pattern": None}
        else:
            todo.append(ex)
    if todo:
        attributions = engine.attribute_many(
            model,
            tokenizer,
            todo,
            batch_size=len(todo),
            target=s["target"],
            output=s["output"],
            steps=s["steps"],
            rule=s["rule"],
            tol=s.get("tol"),
            model_id=s["model_id"],
            label_names=job.options.get("label_names"),
            dtype=s.get("dtype"),
        )
        for ex, attr in zip(todo, attributions, strict=True):
            attr.example_id = ex.id
            pattern = mine_pattern(attr, tokenizer)
            records[ex.id] = {
                "id": ex.id,
                "skipped": None,
                "tokens": attr.num_tokens,
                "pattern": pattern.to_dict() if pattern else None,
                **({"integration": nodes} if (nodes := integration_record(attr)) else {}),
            }
    return [records[ex.id] for ex in examples]


def mining_store(
    job: Job,
    *,
    store: MemoryStore | str | os.PathLike | None = None,
    runs_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    resume_from: str | os.PathLike | None = None,
) -> MemoryStore:
    """The store of a mining run: `store` itself, a run file at the path `store`, the settings-named
    file in `runs_dir` (or `resume_from` where that older file holds this very run and the
    settings-named one does not exist), or memory."""
    if isinstance(store, MemoryStore):
        return store
    if store is not None:
        return open_store(job, path=Path(store), fresh=fresh)
    if runs_dir is None:
        return open_store(job)
    path = run_file(runs_dir, RUN_NAME, job)
    if not fresh and not path.exists() and resume_from is not None and _holds_run(Path(resume_from), job):
        path = Path(resume_from)
    return open_store(job, path=path, fresh=fresh)


def _holds_run(path: Path, job: Job) -> bool:
    """Whether the run file `path` was written by a run of `job` (its header's kind and settings);
    an unreadable or foreign file is simply not this run's."""
    try:
        with open(path, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return False
    return (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and header.get("kind") in (None, job.kind)
        and header.get("settings") == job.settings
    )


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
