"""Encoding texts and prompts, and running plain (optionally head-gated) predictions in batches.

Classifiers read texts and sentence pairs (`encode_batch`). Decoders read a prompt followed by the
tokens an objective forces after it (`encode_prompts`): the prompt keeps the tokenizer's leading
special tokens (a BOS) and drops any it appends (an EOS, a [SEP]), since the next token follows the
text itself; the forced tokens are appended as token ids, never re-tokenised with the prompt.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchEncoding

from .errors import InputError
from .hooks import AttentionHook, HeadGate
from .objectives import is_causal_lm, is_last_token_classifier, readout_for
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


# ---- decoder prompts ------------------------------------------------------------------------
def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens as a decoder reads them: leading special tokens (BOS) kept, special
    tokens appended after the text (EOS, [SEP]) dropped."""
    full = tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
    plain = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start]) + list(plain)
    return list(plain)


def leading_specials(tokenizer, prompt: str) -> int:
    """How many special tokens the tokenizer puts before the prompt's text (0 or 1: a BOS)."""
    plain = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return len(prompt_ids(tokenizer, prompt)) - len(plain)


def continuation_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """The tokens `text` adds after `prompt`: those of prompt + text past the prompt's own tokens
    (so a target is cut into tokens as the model sees it in context), or, where the tokenizer
    merges across the boundary, the tokens of `text` alone."""
    head = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    full = tokenizer(prompt + text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    if full[: len(head)] == head:
        return list(full[len(head) :])
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def pad_id(tokenizer) -> int:
    """The id that fills padding positions (masked out; any valid id would do)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, int):
            return value
    return 0


def encode_prompts(
    tokenizer,
    prompts: Sequence[str],
    forced: Sequence[Sequence[int]] | None = None,
    *,
    max_length: int,
    truncate: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[BatchEncoding, list[bool]]:
    """Decoder inputs: each prompt's tokens (`prompt_ids`) followed by its forced token ids, padded
    on the tokenizer's padding side. `segment_ids` are 0 for the prompt and 1 for forced tokens;
    `prompt_length` [examples] counts each input's prompt tokens after any truncation.

    An input longer than `max_length` (the model's context) is refused (InputError) unless
    truncate=True, which cuts the *beginning* of the prompt (after a leading BOS): the end, where the
    model predicts, is kept. Returns the encoding and, per input, whether it was cut."""
    forced = [list(f) for f in forced] if forced is not None else [[] for _ in prompts]
    rows: list[list[int]] = []
    prompt_lengths: list[int] = []
    cut: list[bool] = []
    for prompt, extra in zip(prompts, forced, strict=True):
        check_text(prompt, "prompt")
        ids = prompt_ids(tokenizer, prompt)
        if not ids:
            raise InputError(f"the prompt {prompt[:40]!r} tokenises to nothing")
        total = len(ids) + len(extra)
        if total > max_length:
            what = f"{len(ids)} tokens" + (f" and {len(extra)} forced target tokens" if extra else "")
            if not truncate:
                raise InputError(
                    f"the prompt has {what}, more than the model's context of {max_length} tokens; "
                    "decoders do not truncate unless asked (--truncate cuts the beginning of the prompt)"
                )
            keep_front = leading_specials(tokenizer, prompt)
            room = max_length - len(extra) - keep_front
            if room < 1:
                raise InputError(
                    f"the forced target tokens ({len(extra)}) leave no room for the prompt in the model's "
                    f"context of {max_length} tokens"
                )
            ids = ids[:keep_front] + ids[len(ids) - room :]
        rows.append(ids + extra)
        prompt_lengths.append(len(ids))
        cut.append(total > max_length)
    width = max(len(r) for r in rows)
    left = tokenizer.padding_side == "left"
    filler = pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), filler, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    segments = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (row, plen) in enumerate(zip(rows, prompt_lengths, strict=True)):
        start = width - len(row) if left else 0
        input_ids[b, start : start + len(row)] = torch.tensor(row)
        mask[b, start : start + len(row)] = 1
        segments[b, start + plen : start + len(row)] = 1
    enc = BatchEncoding(
        {
            "input_ids": input_ids,
            "attention_mask": mask,
            "segment_ids": segments,
            "prompt_length": torch.tensor(prompt_lengths),
        }
    )
    return enc.to(device), cut


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
        or is_causal_lm(model)
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


@dataclass
class _Prompt:
    id: str | None
    text: str
    target: Any
    foil: Any
    text_pair: None = None
    label: None = None


def as_prompt(x: Any, index: int = 0) -> _Prompt:
    """A prompt with its own target and foil from an `attattr.prompts.PromptExample` (prompt),
    a run example or any object with `text`, `target` and `foil`."""
    text = getattr(x, "prompt", None)
    if text is None:
        text = getattr(x, "text", None)
    if not isinstance(text, str):
        raise InputError(f"example {index}: expected a prompt with a target, got {type(x).__name__}")
    return _Prompt(getattr(x, "id", None), text, getattr(x, "target", None), getattr(x, "foil", None))


@torch.no_grad()
def predict_prompts(
    model,
    tokenizer,
    examples: Sequence,
    *,
    output: str | None = None,
    batch_size: int = 32,
    head_gates: HeadTable | ExampleHeadTable | None = None,
    max_length: int | None = None,
    truncate: bool = False,
    dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal LM's score on prompts with their own targets and foils (objective target "gold"):
    per prompt, the metric F `[examples]` float64 (output: "logit-diff", "prob-diff", "logprob", ...;
    default by the prompts' targets) and whether the model gets it right `[examples]` bool
    (`objectives.TokenObjective.correct`: the metric above 0, or every target token the top
    prediction). `head_gates` as for `predict`."""
    from .objectives import make_objective

    model.eval()
    device = next(model.parameters()).device
    max_length = max_length or model_max_length(model, tokenizer)
    objective = make_objective(output, "gold", model=model)
    objective.check(model)
    items = objective.expand([as_prompt(x, i) for i, x in enumerate(examples)], tokenizer)
    readout = objective.readout(model)
    gate = HeadGate(head_gates) if head_gates is not None else None
    values, correct = [], []
    with AttentionHook(model, edits=[gate] if gate is not None else []) as hook:
        for start in range(0, len(items), batch_size):
            stop = min(start + batch_size, len(items))
            enc, _ = objective.encode(
                tokenizer, items[start:stop], max_length=max_length, truncate=truncate, device=device
            )
            if gate is not None and head_gates.dim() == 3:
                gate.gates = head_gates[start:stop]
            with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                outputs = readout(model, model_inputs(enc, model), hook)
                targets = objective.resolve(outputs, [None] * (stop - start))
                values.append(objective(outputs, targets).double().cpu())
                correct.append(objective.correct(outputs).cpu())
            if on_batch is not None:
                on_batch(stop - start)
    if not values:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.bool)
    return torch.cat(values), torch.cat(correct)
