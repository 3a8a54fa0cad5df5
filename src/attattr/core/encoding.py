"""Encoding texts and running plain (optionally head-gated) predictions in batches."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from transformers import BatchEncoding

from .errors import InputError
from .hooks import AttentionHook, HeadGate
from .objectives import is_last_token_classifier, readout_for
from .shapes import ClassProbabilities, ExampleHeadTable, HeadTable


def model_max_length(model, tokenizer) -> int:
    """The longest input the model accepts (position embeddings), capped by the tokenizer's limit."""
    limits = [
        getattr(model.config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 100_000]
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limits = [x - 2 if x == model.config.max_position_embeddings else x for x in limits]
    return min(limits) if limits else 512


def token_count(tokenizer, text: str, pair: str | None = None) -> int:
    """Tokens of an input, special tokens included, untruncated. verbose=False: measuring an
    over-long input is not an error, so no tokenizer warning."""
    return len(tokenizer(text, pair, truncation=False, verbose=False)["input_ids"])


def check_text(text: str, what: str = "text") -> None:
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{what} is empty")


def encode_batch(
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    *,
    max_length: int,
    truncate: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[BatchEncoding, list[bool]]:
    """Tokenise a batch (padded to its longest member). Returns the encoding and, per example,
    whether it had to be truncated. With truncate=False an over-long input raises InputError."""
    for t in texts:
        check_text(t)
    pair_list = list(pairs) if pairs is not None else [None] * len(texts)
    for p in pair_list:
        if p is not None:
            check_text(p, "pair text")
    features, segment_lists, too_long = [], [], []
    for text, pair in zip(texts, pair_list, strict=True):
        full_len = token_count(tokenizer, text, pair)
        if full_len > max_length and not truncate:
            raise InputError(
                f"input has {full_len} tokens, more than the model's maximum {max_length} (truncation is off)"
            )
        too_long.append(full_len > max_length)
        one = tokenizer(text, pair, truncation="longest_first", max_length=max_length)
        # segment of every token (0 = first text, 1 = pair text; special tokens join the segment before them)
        sequence_ids = one.sequence_ids() if one.encodings else [0] * len(one["input_ids"])
        segments, current = [], 0
        for sid in sequence_ids:
            current = sid if sid is not None else current
            segments.append(current)
        features.append(dict(one))
        segment_lists.append(segments)
    enc = tokenizer.pad(features, padding=True, return_tensors="pt")
    width = enc["input_ids"].shape[1]
    segment_ids = torch.zeros(len(features), width, dtype=torch.long)
    for row, segments in enumerate(segment_lists):
        if tokenizer.padding_side == "left":
            segment_ids[row, width - len(segments) :] = torch.tensor(segments)
        else:
            segment_ids[row, : len(segments)] = torch.tensor(segments)
    enc["segment_ids"] = segment_ids
    return enc.to(device), too_long


def model_inputs(enc: BatchEncoding, model) -> dict[str, torch.Tensor]:
    """The encoding's tensors the model's forward accepts (DistilBERT takes no token_type_ids).

    A decoder given a left-padded batch also gets `position_ids` counted from each input's first
    real token, so that every input sits at the positions it has alone (the model would otherwise
    number the padding too)."""
    params = inspect.signature(model.forward).parameters
    inputs = {k: v for k, v in enc.items() if k in params}
    mask = enc.get("attention_mask")
    if (
        "position_ids" in params
        and "position_ids" not in inputs
        and mask is not None
        and bool((mask[:, 0] == 0).any())
        and _is_decoder(model)
    ):
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [examples, seq]
    return inputs


def _is_decoder(model) -> bool:
    return (
        is_last_token_classifier(model)
        or type(model).__name__.endswith("ForCausalLM")
        or bool(getattr(model.config, "is_decoder", False))
    )


@torch.no_grad()
def predict(
    model,
    tokenizer,
    texts: Sequence[str],
    pairs: Sequence[str | None] | None = None,
    *,
    batch_size: int = 32,
    head_gates: HeadTable | ExampleHeadTable | None = None,
    max_length: int | None = None,
    dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ClassProbabilities:
    """Class probabilities `[examples, classes]` (float32). `head_gates`: None, `[layers, heads]`
    (the same for all examples) or `[examples, layers, heads]` multipliers of attention probabilities.
    Each example is classified as the engine reads it (`objectives.readout_for`)."""
    model.eval()
    device = next(model.parameters()).device
    max_length = max_length or model_max_length(model, tokenizer)
    pairs = list(pairs) if pairs is not None else [None] * len(texts)
    readout = readout_for(model)
    gate = HeadGate(head_gates) if head_gates is not None else None
    out = []
    with AttentionHook(model, edits=[gate] if gate is not None else []) as hook:
        for start in range(0, len(texts), batch_size):
            stop = min(start + batch_size, len(texts))
            enc, _ = encode_batch(
                tokenizer, texts[start:stop], pairs[start:stop], max_length=max_length, device=device
            )
            if gate is not None and head_gates.dim() == 3:
                gate.gates = head_gates[start:stop]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = readout(model, model_inputs(enc, model), hook).class_logits()
            out.append(torch.softmax(logits, dim=-1))
            if on_batch is not None:
                on_batch(stop - start)
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)
