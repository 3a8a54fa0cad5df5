"""Patterns: what one example's attribution says the model relies on most (docs/triggers.md).

For one example's attribution of the predicted class, the head holding the largest entry over all
layers gives a *pattern*: that head's top-2 entries (query i, key j), their scores, the tokens at
i and j (as word pieces and as the whole words they belong to), the segment boundary and the
predicted label. Patterns are ranked by the sum of the two scores.

A pattern's trigger is the top-1 pair's tokens, plus the top-2 pair's tokens when its score is at
least `ratio` (0.2) times the top-1 score; special tokens are dropped and a word is inserted once
even when several of its pieces were picked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...core.result import Attribution
from ..runs import as_examples
from .words import (
    Inserted,
    PatternToken,
    TriggerWord,
    insert_words,
    segment_boundary,
    source_words,
    word_pieces,
)

TOP2_RATIO = 0.2  # the second pair joins the trigger when its score >= 0.2 x the first's


@dataclass
class PatternPair:
    """One attribution entry of the pattern's head: query token `query` attends to key token `key`."""

    query: int
    key: int
    score: float


@dataclass
class Pattern:
    example_id: str | None
    layer: int  # model layer of the head holding the example's largest attribution entry
    head: int
    pairs: list[PatternPair]  # that head's top-2 entries, largest first
    tokens: list[PatternToken]  # every position named by the pairs, in input order
    segment_boundary: int  # index of the first separator token ([SEP], </s>)
    predicted: int
    predicted_name: str
    label: int | None  # gold label of the source example, when known
    text: str = ""
    text_pair: str | None = None
    num_tokens: int = 0

    @property
    def score(self) -> float:
        """The ranking score: the sum of the pairs' attribution scores."""
        return float(sum(p.score for p in self.pairs))

    def token(self, position: int) -> PatternToken:
        for t in self.tokens:
            if t.position == position:
                return t
        raise KeyError(position)

    def describe(self) -> str:
        """`word_i -> word_j` per pair (query attends to key), pieces shown where they differ."""
        parts = []
        for p in self.pairs:
            q, k = self.token(p.query), self.token(p.key)
            parts.append(f"{_show(q)}→{_show(k)}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = self.score
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pattern:
        """The pattern of `to_dict`'s output (not validated: `files.load_patterns` validates)."""
        d = dict(d)
        d.pop("score", None)
        d["pairs"] = [PatternPair(**p) for p in d["pairs"]]
        d["tokens"] = [PatternToken(**t) for t in d["tokens"]]
        return cls(**d)


def _show(t: PatternToken) -> str:
    return t.piece if t.special or t.word == t.piece else f"{t.piece}({t.word})"


def mine_pattern(attribution: Attribution, tokenizer=None) -> Pattern | None:
    """The pattern of one example, or None when there is nothing to mine.

    `attribution` should attribute the predicted class. With a `tokenizer`, whole words are found
    from its offsets in the source text; without one (or when the source text does not encode to
    the same tokens) they are rebuilt from the pieces (`##`, `Ġ`, `▁` conventions).
    """
    scores = attribution.scores.detach().float()  # [layers, heads, query, key]
    if scores.dim() != 4 or scores.shape[-1] < 1 or scores.numel() < 2:
        return None
    flat = scores.flatten()
    if not torch.isfinite(flat).all():
        return None
    _, heads, n, _ = scores.shape
    top = int(torch.argmax(flat))
    li, h = divmod(top // (n * n), heads)
    values, idx = torch.topk(scores[li, h].flatten(), min(2, n * n))
    pairs = [
        PatternPair(query=int(i) // n, key=int(i) % n, score=float(v))
        for v, i in zip(values.tolist(), idx.tolist(), strict=True)
    ]
    words = source_words(attribution, tokenizer)
    positions = sorted({p for pair in pairs for p in (pair.query, pair.key)})
    return Pattern(
        example_id=attribution.example_id,
        layer=int(attribution.layers[li]),
        head=int(h),
        pairs=pairs,
        tokens=[words[p] for p in positions],
        segment_boundary=segment_boundary(attribution.special_mask, attribution.tokens),
        predicted=int(attribution.predicted),
        predicted_name=attribution.label_name(int(attribution.predicted)),
        label=attribution.label,
        text=attribution.text,
        text_pair=attribution.text_pair,
        num_tokens=attribution.num_tokens,
    )


def rank_patterns(patterns: Iterable[Pattern]) -> list[Pattern]:
    """By score sum, largest first; ties keep the input (dataset) order."""
    return sorted(patterns, key=lambda p: -p.score)


def trigger_tokens(pattern: Pattern, *, ratio: float = TOP2_RATIO, tokenizer=None) -> list[TriggerWord]:
    """The words to insert: the top pair's tokens, plus the second pair's when its score is at
    least `ratio` x the first's; special tokens dropped; one entry per word (two pieces of the same
    word give one word). In source order. `tokenizer` (optional) counts each word's pieces."""
    pairs = pattern.pairs[:1]
    if (
        len(pattern.pairs) > 1
        and pattern.pairs[0].score > 0
        and pattern.pairs[1].score >= ratio * pattern.pairs[0].score
    ):
        pairs = pattern.pairs[:2]
    positions = sorted({p for pair in pairs for p in (pair.query, pair.key)})
    seen = set()
    out = []
    for pos in positions:
        t = pattern.token(pos)
        if t.special or not t.word.strip():
            continue
        key = (t.segment, t.word_index)
        if key in seen:
            continue
        seen.add(key)
        count = len(word_pieces(tokenizer, t.word)) if tokenizer is not None else 1
        out.append(TriggerWord(t.word, t.segment, t.relative, t.position, count))
    return out


def insert_trigger(
    tokenizer,
    example,
    pattern: Pattern | Sequence[TriggerWord],
    max_length: int,
    *,
    ratio: float = TOP2_RATIO,
) -> Inserted:
    """Insert a pattern's trigger words (or the given words) into `example` (an Example, a string or
    a (text, pair) tuple) at their relative word positions in their segments; the result encodes
    to at most `max_length` tokens (the example's own tokens are cut, never the trigger)."""
    words = trigger_tokens(pattern, ratio=ratio) if isinstance(pattern, Pattern) else list(pattern)
    (item,) = as_examples([example])
    return insert_words(tokenizer, item.text, item.text_pair, words, max_length)
