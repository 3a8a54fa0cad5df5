"""Head importance, head pruning and cross-model correlation (SPEC §2; the paper's Figs. 2, 3, 4).

Pruning a head means multiplying its attention probabilities by 0 inside our attention function
(`AttentionHook.head_gates`), so its context vector is 0; nothing is re-trained. Gates are
`[layers, heads]` (the same for every example) or `[examples, layers, heads]` (one set per example).

Importance methods (each gives an `Importance`: a `[layers, heads]` table, higher = more important):
  attattr        mean over examples of max_{i,j} Attr_h(x) (gold-label probability, max pooling)
  attention      mean over examples of the head's largest attention weight
  taylor         E_x |dL(x)/dxi_h| at gates xi = 1 (L: cross-entropy of the gold label), then each
                 layer's row divided by its l2 norm (Michel et al., 2019)
  accuracy-diff  accuracy with every head minus accuracy with head h alone pruned
                 (ties broken by the drop in mean gold-label probability)
  random         seeded uniform numbers (a baseline order)

Dataset runs are resumable: each finished example's record (its own `[layers, heads]` table and
whatever else the analysis needs) is appended to a `RunStore`. The examples are split into batches
whose composition depends only on the example list and the batch size, a batch with a missing
record is recomputed as a whole, and the final numbers are always computed from the stored
records, so an interrupted and resumed run ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...core.encoding import encode_batch, model_inputs, model_max_length, predict, token_count
from ...core.errors import InputError, ResultFileError
from ...core.hooks import AttentionHook, model_num_heads, model_num_layers
from ..runs import RunStore

METHODS = ("attattr", "attention", "taylor", "accuracy-diff", "random")
IMPORTANCE_FORMAT = "attattr-importance/1"
WINDOW_BATCHES = 8  # batches are formed by length inside windows of this many batches

ProgressFn = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# The importance table
# ---------------------------------------------------------------------------------------------
@dataclass
class Importance:
    """Dataset-level head importance.

    scores: `[layers, heads]` float64, higher = more important.
    secondary: optional `[layers, heads]` tie-breaker used when ordering heads.
    per_example: optional `[examples, layers, heads]` (the stored per-example tables).
    """

    scores: torch.Tensor
    method: str
    example_ids: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    secondary: torch.Tensor | None = None
    per_example: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.scores.shape[1])

    def ascending(self) -> torch.Tensor:
        """Flat head indices (layer * heads + head), least important first.

        Ties are broken by `secondary` (smaller first), then by the head index."""
        scores = self.scores.flatten().double().numpy()
        index = np.arange(scores.size)
        keys = [index]
        if self.secondary is not None:
            keys.append(self.secondary.flatten().double().numpy())
        keys.append(scores)
        return torch.from_numpy(np.lexsort(keys).astype(np.int64))

    def prune_gates(self, count: int) -> torch.Tensor:
        """`[layers, heads]` gates with the `count` least important heads at 0."""
        return gates_pruning(self.ascending()[:count], self.num_layers, self.num_heads)

    def to_dict(self, *, per_example: bool = False) -> dict[str, Any]:
        out = {
            "format": IMPORTANCE_FORMAT,
            "method": self.method,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "scores": self.scores.tolist(),
            "secondary": None if self.secondary is None else self.secondary.tolist(),
            "ranking": self.ascending().flip(0).tolist(),
            "example_ids": list(self.example_ids),
            "settings": self.settings,
        }
        if per_example and self.per_example is not None:
            out["per_example"] = self.per_example.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "importance") -> Importance:
        if not isinstance(data, dict) or data.get("format") != IMPORTANCE_FORMAT:
            raise ResultFileError(f"{source}: not an attattr head-importance file")
        try:
            scores = torch.tensor(data["scores"], dtype=torch.float64)
            secondary = data.get("secondary")
            per_example = data.get("per_example")
            return cls(
                scores=scores,
                method=str(data["method"]),
                example_ids=[str(x) for x in data.get("example_ids", [])],
                settings=dict(data.get("settings", {})),
                secondary=None if secondary is None else torch.tensor(secondary, dtype=torch.float64),
                per_example=None if per_example is None else torch.tensor(per_example, dtype=torch.float64),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultFileError(f"{source}: malformed head-importance file ({exc})") from None

    def save(self, path: str | Path, *, per_example: bool = True) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(per_example=per_example), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        path = Path(path)
        if not path.is_file():
            raise ResultFileError(f"importance file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResultFileError(f"cannot read {path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


# ---------------------------------------------------------------------------------------------
# Gates
# ---------------------------------------------------------------------------------------------
def gates_pruning(pruned: torch.Tensor | Sequence[int], num_layers: int, num_heads: int) -> torch.Tensor:
    """`[layers, heads]` float32 gates: 0 for the flat head indices in `pruned`, 1 elsewhere."""
    gates = torch.ones(num_layers * num_heads)
    index = torch.as_tensor(pruned, dtype=torch.long)
    if index.numel():
        gates[index] = 0.0
    return gates.view(num_layers, num_heads)


def per_example_gates(scores: torch.Tensor, count: int, *, largest: bool = False) -> torch.Tensor:
    """Per-example pruning. scores: `[examples, layers, heads]` (each example's own importance).

    Returns `[examples, layers, heads]` gates with each example's `count` smallest (or largest)
    heads at 0. Ties go to the lower head index."""
    e, num_layers, num_heads = scores.shape
    flat = scores.reshape(e, -1).double()
    order = torch.argsort(-flat if largest else flat, dim=1, stable=True)  # [examples, L*H]
    gates = torch.ones(e, num_layers * num_heads)
    if count > 0:
        gates.scatter_(1, order[:, :count], 0.0)
    return gates.view(e, num_layers, num_heads)


def _mask_key(gates: torch.Tensor) -> str:
    """A short id for a set of pruned heads (hex of the 0/1 mask)."""
    bits = "".join("0" if g != 0 else "1" for g in gates.flatten().tolist())
    return f"{len(bits)}:{int(bits, 2):x}"


# ---------------------------------------------------------------------------------------------
# Examples, batches and the resumable loop
# ---------------------------------------------------------------------------------------------
@dataclass
class _Ex:
    id: str
    text: str
    text_pair: str | None
    label: int | None


def _examples(examples: Iterable, *, need_labels: bool) -> list[_Ex]:
    out = []
    for i, x in enumerate(examples):
        if isinstance(x, str):
            out.append(_Ex(str(i), x, None, None))
        elif isinstance(x, tuple):
            out.append(_Ex(str(i), x[0], x[1] if len(x) > 1 else None, x[2] if len(x) > 2 else None))
        elif hasattr(x, "text"):
            eid = getattr(x, "id", None)
            label = getattr(x, "label", None)
            out.append(
                _Ex(
                    str(i) if eid is None else str(eid),
                    x.text,
                    getattr(x, "text_pair", None),
                    None if label is None else int(label),
                )
            )
        else:
            raise InputError(f"example {i}: expected an Example, a text or a tuple, got {type(x).__name__}")
    if not out:
        raise InputError("no examples given")
    ids = [x.id for x in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"example ids must be unique; {dup!r} appears more than once")
    if need_labels:
        missing = [x.id for x in out if x.label is None]
        if missing:
            raise InputError(
                f"this analysis needs the gold label of every example; missing for {', '.join(missing[:3])}"
            )
    return out


def _check_labels(model, examples: list[_Ex]) -> None:
    n = model.config.num_labels
    bad = [x for x in examples if x.label is not None and not 0 <= x.label < n]
    if bad:
        raise InputError(
            f"gold label {bad[0].label} of example {bad[0].id} is out of range: the model has {n} classes"
        )


def select_examples(examples: Sequence, count: int | None, *, seed: int | None = 0) -> list:
    """`count` examples of a split: a seeded random sample kept in split order (seed=None: the first
    `count`). The built-in splits list examples in source order, which is sorted by label, so the
    first N of a split can all have the same label."""
    items = list(examples)
    if count is None or count >= len(items):
        return items
    if count < 0:
        raise InputError(f"the number of examples must be >= 0, got {count}")
    if seed is None:
        return items[:count]
    import random

    chosen = sorted(random.Random(int(seed)).sample(range(len(items)), count))
    return [items[i] for i in chosen]


def plan_batches(tokenizer, examples: Sequence[_Ex], batch_size: int) -> list[list[int]]:
    """Deterministic batches (indices into `examples`): inside consecutive windows of
    `batch_size * WINDOW_BATCHES` examples, sorted by token count, cut into `batch_size` pieces."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size!r}")
    window = batch_size * WINDOW_BATCHES
    batches = []
    for w0 in range(0, len(examples), window):
        idx = list(range(w0, min(w0 + window, len(examples))))
        lengths = {i: token_count(tokenizer, examples[i].text, examples[i].text_pair) for i in idx}
        idx.sort(key=lambda i: lengths[i])
        batches += [idx[b : b + batch_size] for b in range(0, len(idx), batch_size)]
    return batches


class _MemoryStore:
    """RunStore's interface without a file; records go through JSON so numbers match a stored run."""

    def __init__(self):
        self.records: dict[str, dict[str, Any]] = {}

    def done(self, example_id: str) -> bool:
        return str(example_id) in self.records

    def append(self, record: dict[str, Any]) -> None:
        self.records[str(record["id"])] = json.loads(json.dumps(record, default=_plain))

    def ordered(self, ids: Iterable[str]) -> list[dict[str, Any]]:
        return [self.records[str(i)] for i in ids if str(i) in self.records]


def _plain(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__}")


def _run(
    examples: list[_Ex],
    batches: list[list[int]],
    store: RunStore | _MemoryStore | None,
    compute: Callable[[list[_Ex]], list[dict[str, Any]]],
    on_example: ProgressFn | None,
) -> list[dict[str, Any]]:
    """Compute every batch that has an example without a record; return records in example order."""
    store = store if store is not None else _MemoryStore()
    for batch in batches:
        members = [examples[i] for i in batch]
        if not all(store.done(x.id) for x in members):
            records = compute(members)
            for record in records:
                if not store.done(record["id"]):
                    store.append(record)
        if on_example is not None:
            on_example(len(batch))
    return store.ordered([x.id for x in examples])


def _table(values: torch.Tensor) -> list[list[float]]:
    return values.double().tolist()


# ---------------------------------------------------------------------------------------------
# Per-batch computations
# ---------------------------------------------------------------------------------------------
def _attribution_records(
    model, tokenizer, members: list[_Ex], *, steps, rule, dtype, memory_budget
) -> list[dict[str, Any]]:
    """Per example: the attribution importance (gold label) and the max-attention importance."""
    from ...core.engine import attribute_many

    out = []
    for attr in attribute_many(
        model,
        tokenizer,
        members,
        target="gold",
        output="prob",
        steps=steps,
        rule=rule,
        dtype=dtype,
        memory_budget=memory_budget,
        batch_size=len(members),
    ):
        out.append(
            {
                "id": attr.example_id,
                "attattr": _table(attr.head_importance()),
                "attention": _table(attr.attentions.flatten(2).amax(dim=2)),
                "label": attr.label,
                "probability": attr.probabilities[attr.label],
                "correct": attr.predicted == attr.label,
            }
        )
    return out


def _encode(model, tokenizer, members: list[_Ex]):
    device = next(model.parameters()).device
    pairs = [x.text_pair for x in members]
    enc, _ = encode_batch(
        tokenizer,
        [x.text for x in members],
        pairs if any(p is not None for p in pairs) else None,
        max_length=model_max_length(model, tokenizer),
        device=device,
    )
    return enc


@torch.no_grad()
def _attention_records(model, tokenizer, members: list[_Ex]) -> list[dict[str, Any]]:
    """Per example: each head's largest attention weight over real (non-padding) tokens."""
    enc = _encode(model, tokenizer, members)
    mask = enc["attention_mask"].bool()  # [B, n]
    with AttentionHook(model, record=True) as hook:
        model(**model_inputs(enc, model))
        layers = [hook.attentions[i] for i in sorted(hook.attentions)]
    att = torch.stack(layers, dim=1).float()  # [B, L, H, n, n]
    valid = (mask[:, :, None] & mask[:, None, :])[:, None, None]  # [B, 1, 1, n, n]
    best = att.masked_fill(~valid, float("-inf")).flatten(3).amax(dim=3)  # [B, L, H]
    return [{"id": x.id, "attention": _table(best[b])} for b, x in enumerate(members)]


def _taylor_records(model, tokenizer, members: list[_Ex]) -> list[dict[str, Any]]:
    """Per example: |dL/dxi_h| at xi = 1, L = cross-entropy of the gold label. `[layers, heads]`.

    Each example has its own gates ([examples, layers, heads]); the summed loss's gradient w.r.t.
    an example's gates is that example's own gradient, so one pass serves the whole batch."""
    enc = _encode(model, tokenizer, members)
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    param = next(model.parameters())
    gates = torch.ones(len(members), num_layers, num_heads, device=param.device, dtype=param.dtype)
    gates.requires_grad_(True)
    gold = torch.tensor([x.label for x in members], device=gates.device)
    with torch.enable_grad(), AttentionHook(model, head_gates=gates):
        logits = model(**model_inputs(enc, model)).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, gold, reduction="sum")
        (grad,) = torch.autograd.grad(loss, gates)
    return [{"id": x.id, "taylor": _table(grad[b].abs())} for b, x in enumerate(members)]


def _accuracy_diff_records(model, tokenizer, members: list[_Ex], *, eval_batch_size: int) -> list[dict]:
    """Per example: correctness and gold probability with all heads, and with each head alone pruned."""
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    count = num_layers * num_heads
    single = torch.ones(count + 1, count)
    single[torch.arange(1, count + 1), torch.arange(count)] = 0.0  # row 0: nothing pruned
    single = single.view(count + 1, num_layers, num_heads)
    texts = [x.text for x in members for _ in range(count + 1)]
    pairs = [x.text_pair for x in members for _ in range(count + 1)]
    gates = single.repeat(len(members), 1, 1)
    probs = predict(
        model,
        tokenizer,
        texts,
        pairs if any(p is not None for p in pairs) else None,
        batch_size=eval_batch_size,
        head_gates=gates,
    ).view(len(members), count + 1, -1)
    out = []
    for b, x in enumerate(members):
        gold_p = probs[b, :, x.label]
        correct = probs[b].argmax(dim=-1) == x.label
        out.append(
            {
                "id": x.id,
                "correct_full": bool(correct[0]),
                "prob_full": float(gold_p[0]),
                "correct_pruned": correct[1:].view(num_layers, num_heads).tolist(),
                "prob_pruned": _table(gold_p[1:].view(num_layers, num_heads)),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Importance over a dataset
# ---------------------------------------------------------------------------------------------
def head_importance(
    model,
    tokenizer,
    examples: Iterable | None,
    method: str = "attattr",
    *,
    batch_size: int = 8,
    steps: int | str = 20,
    rule: str = "riemann-right",
    dtype: str | None = None,
    memory_budget: int | None = None,
    seed: int = 0,
    eval_batch_size: int = 64,
    store: RunStore | None = None,
    on_example: ProgressFn | None = None,
    settings: dict[str, Any] | None = None,
) -> Importance:
    """Dataset-level head importance by `method` (see the module docstring).

    examples: `attattr.data.Example`s (id, text, text_pair, label) — labels are needed by attattr,
        taylor and accuracy-diff; ignored by random.
    batch_size: examples per pass (attattr: per engine call; taylor/attention: per forward).
    steps, rule, dtype, memory_budget: the engine's integration options (attattr only).
    store: a RunStore to append per-example records to and resume from (None: in memory).
    """
    if method not in METHODS:
        raise InputError(f"unknown importance method {method!r}; choose one of: {', '.join(METHODS)}")
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    info = dict(settings or {})
    if method == "random":
        generator = torch.Generator().manual_seed(int(seed))
        scores = torch.rand(num_layers, num_heads, generator=generator, dtype=torch.float64)
        return Importance(scores, "random", [], {**info, "seed": int(seed)})

    items = _examples(examples or [], need_labels=method != "attention")
    _check_labels(model, items)
    model.eval()
    batches = plan_batches(tokenizer, items, batch_size)
    if method == "attattr":
        if isinstance(steps, str) and steps != "auto":
            raise InputError(f"steps must be an integer or 'auto', got {steps!r}")
        info.update({"steps": steps, "rule": rule, "dtype": dtype or "float32"})

        def compute(m):
            return _attribution_records(
                model, tokenizer, m, steps=steps, rule=rule, dtype=dtype, memory_budget=memory_budget
            )

        key = "attattr"
    elif method == "attention":

        def compute(m):
            return _attention_records(model, tokenizer, m)

        key = "attention"
    elif method == "taylor":

        def compute(m):
            return _taylor_records(model, tokenizer, m)

        key = "taylor"
    else:

        def compute(m):
            return _accuracy_diff_records(model, tokenizer, m, eval_batch_size=eval_batch_size)

        key = None
    info["batch_size"] = batch_size
    records = _run(items, batches, store, compute, on_example)
    ids = [r["id"] for r in records]

    if method == "accuracy-diff":
        full_acc = float(np.mean([r["correct_full"] for r in records]))
        full_prob = float(np.mean([r["prob_full"] for r in records]))
        pruned_acc = torch.tensor([r["correct_pruned"] for r in records], dtype=torch.float64).mean(0)
        pruned_prob = torch.tensor([r["prob_pruned"] for r in records], dtype=torch.float64).mean(0)
        info.update({"accuracy": full_acc, "mean_gold_probability": full_prob})
        return Importance(full_acc - pruned_acc, method, ids, info, secondary=full_prob - pruned_prob)

    per_example = torch.tensor([r[key] for r in records], dtype=torch.float64)  # [E, L, H]
    scores = per_example.mean(dim=0)
    if method == "taylor":
        norms = scores.norm(p=2, dim=1, keepdim=True)
        scores = scores / norms.clamp_min(1e-20)  # layer-wise l2 normalisation (Michel et al.)
    return Importance(scores, method, ids, info, per_example=per_example)


# ---------------------------------------------------------------------------------------------
# Fig. 2: effectiveness of per-example orderings
# ---------------------------------------------------------------------------------------------
CURVES = ("attattr-smallest", "attattr-largest", "attention-smallest", "attention-largest")


def prune_counts(total: int, step: int) -> list[int]:
    """0, step, 2*step, ... and always `total` itself."""
    if not isinstance(step, int) or step < 1:
        raise InputError(f"step must be an integer >= 1, got {step!r}")
    counts = list(range(0, total + 1, step))
    if counts[-1] != total:
        counts.append(total)
    return counts


def effectiveness(
    model,
    tokenizer,
    examples: Iterable,
    *,
    step: int = 4,
    batch_size: int = 8,
    eval_batch_size: int = 64,
    steps: int | str = 20,
    rule: str = "riemann-right",
    dtype: str | None = None,
    memory_budget: int | None = None,
    store: RunStore | None = None,
    on_example: ProgressFn | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per example, prune its k least (or most) important heads by its own attribution (gold label)
    or by its own max attention weight; accuracy and mean gold-label probability against k.

    Returns {"counts": [k...], "curves": {curve: {"accuracy": [...], "probability": [...]}},
    "examples": N, "example_ids": [...], "settings": {...}}.
    """
    items = _examples(examples, need_labels=True)
    _check_labels(model, items)
    model.eval()
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    counts = prune_counts(num_layers * num_heads, step)

    def compute(members: list[_Ex]) -> list[dict[str, Any]]:
        records = _attribution_records(
            model, tokenizer, members, steps=steps, rule=rule, dtype=dtype, memory_budget=memory_budget
        )
        # one row per distinct (example, pruned set): k = 0 and k = all are shared by the four curves
        rows_gates: list[torch.Tensor] = []
        rows_example: list[int] = []
        where: list[dict[str, list[int]]] = []
        for b, record in enumerate(records):
            seen: dict[str, int] = {}
            slots: dict[str, list[int]] = {}
            for curve in CURVES:
                table = torch.tensor(record[curve.split("-")[0]], dtype=torch.float64)[None]
                slots[curve] = []
                for k in counts:
                    g = per_example_gates(table, k, largest=curve.endswith("largest"))[0]
                    key = _mask_key(g)
                    if key not in seen:
                        seen[key] = len(rows_gates)
                        rows_gates.append(g)
                        rows_example.append(b)
                    slots[curve].append(seen[key])
            where.append(slots)
        texts = [members[b].text for b in rows_example]
        pairs = [members[b].text_pair for b in rows_example]
        probs = predict(
            model,
            tokenizer,
            texts,
            pairs if any(p is not None for p in pairs) else None,
            batch_size=eval_batch_size,
            head_gates=torch.stack(rows_gates),
        )
        for b, record in enumerate(records):
            label = members[b].label
            record["curves"] = {
                curve: {
                    "correct": [bool(probs[r].argmax() == label) for r in where[b][curve]],
                    "probability": [float(probs[r, label]) for r in where[b][curve]],
                }
                for curve in CURVES
            }
        return records

    batches = plan_batches(tokenizer, items, batch_size)
    records = _run(items, batches, store, compute, on_example)
    curves = {}
    for curve in CURVES:
        correct = np.array([r["curves"][curve]["correct"] for r in records], dtype=np.float64)
        prob = np.array([r["curves"][curve]["probability"] for r in records], dtype=np.float64)
        curves[curve] = {"accuracy": correct.mean(0).tolist(), "probability": prob.mean(0).tolist()}
    return {
        "kind": "effectiveness",
        "counts": counts,
        "total_heads": num_layers * num_heads,
        "curves": curves,
        "examples": len(records),
        "example_ids": [r["id"] for r in records],
        "settings": {
            **(settings or {}),
            "step": step,
            "steps": steps,
            "rule": rule,
            "dtype": dtype or "float32",
            "batch_size": batch_size,
        },
        "summary": _effectiveness_summary(counts, curves),
    }


def _effectiveness_summary(counts: list[int], curves: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------
# Fig. 3: pruning curves from dataset importance
# ---------------------------------------------------------------------------------------------
def pruning_curves(
    model,
    tokenizer,
    eval_examples: Iterable,
    importances: dict[str, Importance],
    *,
    fractions: Sequence[float] = tuple(i / 10 for i in range(11)),
    eval_batch_size: int = 64,
    store: RunStore | None = None,
    on_evaluation: ProgressFn | None = None,
) -> dict[str, Any]:
    """Prune the p least important heads (p = fraction of all heads) and evaluate on `eval_examples`.

    importances: label -> Importance; labels "random-<seed>" ... are summarised together as
        "random" (mean and standard deviation over seeds).
    Evaluations are keyed by the set of pruned heads, so identical sets (p = 0, p = 100 %) run once
    and a store makes the run resumable.
    Returns {"fractions", "counts", "methods": {method: {"accuracy", "probability"[, "accuracy_std",
    "seeds"]}}, "full_accuracy", ...}.
    """
    items = _examples(eval_examples, need_labels=True)
    _check_labels(model, items)
    model.eval()
    num_layers, num_heads = model_num_layers(model), model_num_heads(model)
    total = num_layers * num_heads
    for f in fractions:
        if not 0.0 <= f <= 1.0:
            raise InputError(f"pruning fractions must lie in [0, 1], got {f}")
    counts = [int(round(f * total)) for f in fractions]
    for label, imp in importances.items():
        if (imp.num_layers, imp.num_heads) != (num_layers, num_heads):
            raise InputError(
                f"importance {label!r} is for {imp.num_layers}x{imp.num_heads} heads, "
                f"the model has {num_layers}x{num_heads}"
            )
    store = store if store is not None else _MemoryStore()
    # predict in order of length (less padding per batch); only means are kept, so order is free
    by_length = sorted(
        range(len(items)),
        key=lambda i: token_count(tokenizer, items[i].text, items[i].text_pair),
    )
    texts = [items[i].text for i in by_length]
    pairs = [items[i].text_pair for i in by_length]
    pairs_arg = pairs if any(p is not None for p in pairs) else None
    labels = torch.tensor([items[i].label for i in by_length])

    results: dict[str, dict[str, list[float]]] = {}
    for label, imp in importances.items():
        acc, prob = [], []
        for k in counts:
            gates = imp.prune_gates(k)
            key = _mask_key(gates)
            if not store.done(key):
                probs = predict(
                    model, tokenizer, texts, pairs_arg, batch_size=eval_batch_size, head_gates=gates
                )
                store.append(
                    {
                        "id": key,
                        "pruned": int((gates == 0).sum()),
                        "accuracy": float((probs.argmax(-1) == labels).double().mean()),
                        "probability": float(probs.gather(1, labels[:, None]).double().mean()),
                    }
                )
            record = store.ordered([key])[0]
            acc.append(record["accuracy"])
            prob.append(record["probability"])
            if on_evaluation is not None:
                on_evaluation(1)
        results[label] = {"accuracy": acc, "probability": prob}

    methods: dict[str, dict[str, Any]] = {}
    random_labels = [lab for lab in results if lab == "random" or lab.startswith("random-")]
    for label, values in results.items():
        if label not in random_labels:
            methods[label] = values
    if random_labels:
        acc = np.array([results[lab]["accuracy"] for lab in random_labels])
        prob = np.array([results[lab]["probability"] for lab in random_labels])
        methods["random"] = {
            "accuracy": acc.mean(0).tolist(),
            "probability": prob.mean(0).tolist(),
            "accuracy_std": acc.std(0).tolist(),
            "probability_std": prob.std(0).tolist(),
            "seeds": random_labels,
            "per_seed": {lab: results[lab] for lab in random_labels},
        }
    x = np.asarray(fractions, dtype=np.float64)
    span = x[-1] - x[0] if len(x) > 1 else 1.0
    return {
        "kind": "pruning",
        "fractions": list(fractions),
        "counts": counts,
        "total_heads": total,
        "eval_examples": len(items),
        "methods": methods,
        "mean_accuracy": {m: float(np.trapezoid(v["accuracy"], x) / span) for m, v in methods.items()},
    }


# ---------------------------------------------------------------------------------------------
# Fig. 4: correlation across models
# ---------------------------------------------------------------------------------------------
def correlate(importances: dict[str, Importance]) -> dict[str, Any]:
    """Pearson and Spearman correlation of the flattened `[layers, heads]` importances, per pair.

    Returns {"names", "pairs": [{"a", "b", "pearson", "pearson_p", "spearman", "spearman_p", "x", "y"}],
    "pearson": matrix, "spearman": matrix}."""
    from scipy.stats import pearsonr, spearmanr

    names = list(importances)
    if len(names) < 2:
        raise InputError("correlation needs the importance of at least two models")
    shapes = {tuple(imp.scores.shape) for imp in importances.values()}
    if len(shapes) != 1:
        raise InputError(f"importances have different shapes {sorted(shapes)}; they must share an encoder")
    flat = {n: importances[n].scores.flatten().double().numpy() for n in names}
    pearson = np.eye(len(names))
    spearman = np.eye(len(names))
    pairs = []
    for (ia, a), (ib, b) in combinations(enumerate(names), 2):
        r, rp = pearsonr(flat[a], flat[b])
        rho, sp = spearmanr(flat[a], flat[b])
        pearson[ia, ib] = pearson[ib, ia] = r
        spearman[ia, ib] = spearman[ib, ia] = rho
        pairs.append(
            {
                "a": a,
                "b": b,
                "pearson": _finite(r),
                "pearson_p": _finite(rp),
                "spearman": _finite(rho),
                "spearman_p": _finite(sp),
                "x": flat[a].tolist(),
                "y": flat[b].tolist(),
            }
        )
    return {
        "kind": "correlation",
        "names": names,
        "pairs": pairs,
        "pearson": [[_finite(v) for v in row] for row in pearson.tolist()],
        "spearman": [[_finite(v) for v in row] for row in spearman.tolist()],
    }


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
