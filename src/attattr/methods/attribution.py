"""attattr: the mean over examples of max_{i,j} Attr_h(x), the attribution of the gold label's
probability (max pooling, docs/method.md §2); for a causal LM, of the prompts' metric (logit difference, ...).
Its records also keep each head's largest attention weight, which the effectiveness analysis
orders heads by (for a causal LM, over query positions after the first: the first token can only
attend to itself, so every head's largest weight would be 1 there)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.engine import attribute_many, resolve_dtype
from ..core.errors import InputError
from ..core.quadrature import RULES, integration_record
from ..core.quadrature import rule as quadrature_rule
from .base import Example, Method, Record, check_prompts, is_decoder, mean_importance, register_method, table
from .importance import Importance

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def check_integration(steps: int | str, rule: str, dtype: str | None) -> None:
    """Refuse bad integration settings before any work (InputError)."""
    if rule not in RULES:
        raise InputError(f"unknown integration rule {rule!r}; choose one of: {', '.join(RULES)}")
    if isinstance(steps, str):
        if steps != "auto":
            raise InputError(f"steps must be an integer or 'auto', got {steps!r}")
    else:
        quadrature_rule(rule, steps)  # steps >= 1
    resolve_dtype(dtype, "cpu")


def attribution_records(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    steps: int | str,
    rule: str,
    dtype: str | None,
    memory_budget: int | None = None,
    metric: str | None = None,
    tol: float | None = None,
) -> list[Record]:
    """Per example: the attribution importance (gold label), the max-attention importance, and
    the unpruned prediction (gold-label probability, correctness). One engine call for the batch.
    Causal LMs: F is `metric` of each prompt's own target and foil; the record keeps "metric" (its
    value) and "correct" (above 0; for logprob and prob, the first target token predicted).
    With steps="auto" (to `tol`) each record also keeps its "integration" (`integration_record`)."""
    decoder = is_decoder(model)
    if decoder:
        check_prompts(examples)
    out = []
    for attr in attribute_many(
        model,
        tokenizer,
        examples,
        target="gold",
        output=metric if decoder else "prob",
        steps=steps,
        rule=rule,
        tol=tol,
        dtype=dtype,
        memory_budget=memory_budget,
        batch_size=len(examples),
    ):
        nodes = integration_record(attr)
        if decoder:
            d = attr.decoder
            attention = attr.attentions[:, :, 1:] if attr.attentions.shape[2] > 1 else attr.attentions
            if d["output"] in ("logit-diff", "prob-diff"):
                correct = attr.output_value > 0
            else:
                correct = bool(d["top"]) and d["top"][0]["id"] == d["target"]["ids"][0]
            out.append(
                {
                    "id": attr.example_id,
                    "attattr": table(attr.head_importance()),
                    "attention": table(attention.flatten(2).amax(dim=2)),
                    "metric": attr.output_value,
                    "correct": bool(correct),
                    **({"integration": nodes} if nodes else {}),
                }
            )
            continue
        out.append(
            {
                "id": attr.example_id,
                "attattr": table(attr.head_importance()),
                "attention": table(attr.attentions.flatten(2).amax(dim=2)),
                "label": attr.label,
                "probability": attr.probabilities[attr.label],
                "correct": attr.predicted == attr.label,
                **({"integration": nodes} if nodes else {}),
            }
        )
    return out


def _records(model, tokenizer, examples: Sequence[Example], settings: Mapping[str, Any]) -> list[Record]:
    return attribution_records(
        model,
        tokenizer,
        examples,
        steps=settings["steps"],
        rule=settings["rule"],
        dtype=settings.get("dtype"),
        memory_budget=settings.get("memory_budget"),
        metric=settings.get("metric"),
        tol=settings.get("tol"),
    )


def _merge(
    records: Sequence[Record], *, num_layers: int, num_heads: int, settings: dict[str, Any]
) -> Importance:
    return mean_importance(records, "attattr", "attattr", settings)


register_method(
    Method(
        "attattr",
        _records,
        _merge,
        needs_labels=True,
        integration=True,
        summary="mean over examples of max_ij Attr_h(x) (gold-label probability)",
    )
)
