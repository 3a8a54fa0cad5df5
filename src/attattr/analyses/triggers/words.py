"""Word pieces and whole words: aligning an attribution's tokens with the words of its source text,
and inserting words into a text at relative word positions per segment.

Word pieces. A piece such as `##able` cannot be inserted on its own: it would be tokenised into
something else. A trigger is therefore the *whole word* containing the piece, exactly as it is
written in the source text (found with the tokenizer's offsets and word ids), inserted at a word
boundary of the target text with spaces around it; the edited text is tokenised again, so the
model sees valid word pieces. Words are the tokenizer's pre-tokenised words (BERT splits
punctuation into words of its own).

Relative position. A source word with index w among the W words of its segment has the relative
position r = w / (W - 1) (0 for a one-word segment): the first word maps to the start, the last
word to the end. In a target segment of W' words, the word goes into gap round(r * W') of the
W' + 1 gaps between words (gap 0 = before the first word, gap W' = after the last).

Length. The edited input never exceeds the model's maximum length: the example's own tokens are
truncated first (longest segment first, at word boundaries), never the trigger.

Pairs. Segment A is the first text, segment B the pair text. A word from segment B goes into the
target's pair text; when the target has no pair text it goes into its only segment.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ...core.encoding import token_count
from ...core.errors import InputError
from ...core.result import Attribution

UNKNOWN = {"[UNK]", "<unk>", "<UNK>"}  # flagged special by the engine, but not separators
PIECE_MARKS = ("Ġ", "▁")  # byte-level BPE / SentencePiece word-start marks


@dataclass
class PatternToken:
    """One token position taking part in a pattern, with the whole word it belongs to."""

    position: int  # index in the source example's encoding (special tokens included)
    piece: str  # the word piece at that position
    special: bool  # [CLS]/[SEP]/<s>/...: never inserted
    segment: int  # 0 = first text, 1 = pair text
    word: str  # the whole word containing the piece, as written in the source text
    word_index: int  # index of that word among the words of its segment (-1 for special tokens)
    segment_words: int  # number of words of that segment in the source encoding

    @property
    def relative(self) -> float:
        """Relative word position in [0, 1] within the segment: 0 = first word, 1 = last word."""
        if self.segment_words <= 1 or self.word_index < 0:
            return 0.0
        return self.word_index / (self.segment_words - 1)


@dataclass
class TriggerWord:
    """A word to insert: where it came from (segment, relative position) and its word pieces."""

    word: str
    segment: int
    relative: float
    source_position: int
    pieces: int  # number of word pieces the word has on its own


@dataclass
class Inserted:
    """An evaluation example with words inserted (texts ready to be tokenised again)."""

    text: str
    text_pair: str | None
    truncated: bool  # the example's own tokens had to be cut to make room
    num_tokens: int  # length of the new encoding, special tokens included
    gaps: list[tuple[int, int]]  # per inserted word: (segment, gap index in the target's words)


# ---- aligning an attribution's tokens with words -------------------------------------------
def segment_boundary(special_mask: Sequence[bool], tokens: Sequence[str] | None = None) -> int:
    """Index of the first separator: the first special token after position 0 that is not the
    unknown-word token (n if none)."""
    for i, special in enumerate(special_mask):
        if i > 0 and special and (tokens is None or tokens[i] not in UNKNOWN):
            return i
    return len(special_mask)


def source_words(attr: Attribution, tokenizer=None) -> list[PatternToken]:
    """Per position of the attribution: its segment, whole word and word index.

    With a `tokenizer`, whole words come from its offsets in the source text; without one (or
    when the source text does not encode to the same tokens) they are rebuilt from the pieces."""
    if tokenizer is not None and attr.text:
        found = _words_from_offsets(attr, tokenizer)
        if found is not None:
            return found
    return _words_from_pieces(attr)


def _words_from_pieces(attr: Attribution) -> list[PatternToken]:
    # A piece starts a new word unless it is a continuation (`##x`), or, for byte-level BPE /
    # SentencePiece vocabularies, unless it lacks the word-start mark.
    n = attr.num_tokens
    marked = any(t.startswith(PIECE_MARKS) for t in attr.tokens)
    boundary = segment_boundary(attr.special_mask, attr.tokens)
    segments = [0 if i <= boundary else 1 for i in range(n)]
    if attr.segment_ids and len(set(attr.segment_ids)) > 1:
        segments = [int(s) for s in attr.segment_ids]
    word_of: list[int] = [-1] * n
    words: dict[tuple[int, int], list[int]] = {}
    counter = {0: -1, 1: -1}
    previous_special = True
    for i, tok in enumerate(attr.tokens):
        seg = segments[i]
        if attr.special_mask[i]:
            if tok in UNKNOWN:  # an unknown word is still a word of the text (never inserted)
                counter[seg] += 1
            previous_special = True
            continue
        starts = (
            previous_special
            or (marked and tok.startswith(PIECE_MARKS))
            or (not marked and not tok.startswith("##"))
        )
        if starts or counter[seg] < 0:
            counter[seg] += 1
        word_of[i] = counter[seg]
        words.setdefault((seg, counter[seg]), []).append(i)
        previous_special = False
    out = []
    for i, tok in enumerate(attr.tokens):
        seg = segments[i]
        if word_of[i] < 0:
            out.append(PatternToken(i, tok, True, seg, tok, -1, counter[seg] + 1))
            continue
        pieces = [attr.tokens[p] for p in words[(seg, word_of[i])]]
        word = "".join(p[2:] if p.startswith("##") else p.lstrip("".join(PIECE_MARKS)) for p in pieces)
        out.append(PatternToken(i, tok, False, seg, word, word_of[i], counter[seg] + 1))
    return out


def _words_from_offsets(attr: Attribution, tokenizer) -> list[PatternToken] | None:
    n = attr.num_tokens
    kwargs: dict[str, Any] = {"return_offsets_mapping": True}
    if attr.truncated:
        kwargs.update(truncation="longest_first" if attr.text_pair else True, max_length=n)
    try:
        enc = tokenizer(attr.text, attr.text_pair, **kwargs)
        word_ids = enc.word_ids()
        seq_ids = enc.sequence_ids()
    except (NotImplementedError, ValueError, TypeError):
        return None  # a slow tokenizer (no offsets): rebuild words from the pieces instead
    if list(enc["input_ids"]) != list(attr.token_ids):
        return None
    offsets = enc["offset_mapping"]
    sources = (attr.text, attr.text_pair or "")
    spans: dict[tuple[int, int], list[int]] = {}
    for i, (w, s) in enumerate(zip(word_ids, seq_ids, strict=True)):
        if w is not None and s is not None:
            span = spans.setdefault((s, w), [offsets[i][0], offsets[i][1]])
            span[0], span[1] = min(span[0], offsets[i][0]), max(span[1], offsets[i][1])
    order = {seg: sorted(w for s, w in spans if s == seg) for seg in (0, 1)}
    out = []
    for i in range(n):
        s, w = seq_ids[i], word_ids[i]
        special = bool(attr.special_mask[i]) or s is None or w is None
        seg = s if s is not None else (0 if i <= segment_boundary(attr.special_mask, attr.tokens) else 1)
        if special:
            out.append(PatternToken(i, attr.tokens[i], True, seg, attr.tokens[i], -1, len(order[seg])))
            continue
        a, b = spans[(s, w)]
        word = sources[s][a:b]
        out.append(PatternToken(i, attr.tokens[i], False, s, word, order[s].index(w), len(order[s])))
    return out


# ---- word pieces of a text -----------------------------------------------------------------
def word_pieces(tokenizer, text: str | None) -> list[int]:
    """The token ids of `text` on its own (no special tokens); [] for no text."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def is_special_word(tokenizer, word: str) -> bool:
    """A special token other than the unknown-word token, or a word that encodes to nothing."""
    specials = set(getattr(tokenizer, "all_special_tokens", []))
    unk = getattr(tokenizer, "unk_token", None)
    return word.strip() in (specials - {unk}) or not word_pieces(tokenizer, word)


def word_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans of the tokenizer's words in `text` (pre-tokenised words, punctuation apart)."""
    if not text:
        return []
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        word_ids = enc.word_ids()
    except (NotImplementedError, ValueError, TypeError):
        return [m.span() for m in re.finditer(r"\S+", text)]
    spans: dict[int, list[int]] = {}
    for w, (a, b) in zip(word_ids, enc["offset_mapping"], strict=True):
        if w is None:
            continue
        span = spans.setdefault(w, [a, b])
        span[0], span[1] = min(span[0], a), max(span[1], b)
    return [tuple(spans[w]) for w in sorted(spans)]


# ---- insertion -----------------------------------------------------------------------------
def insert_words(
    tokenizer, text: str, text_pair: str | None, words: Sequence[TriggerWord], max_length: int
) -> Inserted:
    """Insert `words` into (text, text_pair) at their relative word positions in their segments;
    the result encodes to at most `max_length` tokens (the example's own tokens are cut, never the
    inserted words)."""
    if not words:
        raise InputError("nothing to insert (the trigger has no non-special tokens)")
    for w in words:
        if is_special_word(tokenizer, w.word):
            raise InputError(f"refusing to insert the special token {w.word!r}")
    has_pair = text_pair is not None
    targets = [(w, 1 if (w.segment == 1 and has_pair) else 0) for w in words]
    trigger_len = sum(len(word_pieces(tokenizer, w.word)) for w in words)
    specials = tokenizer.num_special_tokens_to_add(pair=has_pair)
    budget = max_length - specials - trigger_len
    if budget < (2 if has_pair else 1):
        raise InputError(
            f"the trigger ({trigger_len} tokens) leaves no room for the example within {max_length} tokens"
        )
    own = [len(word_pieces(tokenizer, text)), len(word_pieces(tokenizer, text_pair)) if has_pair else 0]
    truncated = False
    for _ in range(20):  # re-tokenising the edited text may add a token or two; shrink and retry
        keep = _longest_first(own, budget)
        cut = [
            _truncate_words(tokenizer, text, keep[0]) if keep[0] < own[0] else text,
            (_truncate_words(tokenizer, text_pair, keep[1]) if keep[1] < own[1] else text_pair)
            if has_pair
            else None,
        ]
        truncated = truncated or keep != own
        new, gaps = _insert(tokenizer, cut, targets)
        n = token_count(tokenizer, new[0], new[1])
        if n <= max_length:
            return Inserted(new[0], new[1], truncated, n, gaps)
        budget -= n - max_length
        if budget < 1:
            break
    raise InputError(f"could not fit the example and the trigger into {max_length} tokens")


def _longest_first(lengths: list[int], budget: int) -> list[int]:
    """Cut token counts to sum to at most `budget`, one token at a time from the longer segment."""
    a, b = lengths
    while a + b > budget:
        if a >= b:
            a -= 1
        else:
            b -= 1
    return [a, b]


def _insert(tokenizer, texts: list[str | None], targets) -> tuple[list[str | None], list[tuple[int, int]]]:
    out = list(texts)
    gaps: list[tuple[int, int]] = []
    per_segment: dict[int, list[tuple[int, str]]] = {}
    for w, seg in targets:
        spans = word_spans(tokenizer, texts[seg] or "")
        gap = math.floor(w.relative * len(spans) + 0.5)
        gap = min(max(gap, 0), len(spans))
        per_segment.setdefault(seg, []).append((gap, w.word))
        gaps.append((seg, gap))
    for seg, items in per_segment.items():
        current = texts[seg] or ""
        spans = word_spans(tokenizer, current)
        # from the last gap backwards, so earlier offsets stay valid; same gap keeps source order
        by_gap: dict[int, list[str]] = {}
        for gap, word in items:
            by_gap.setdefault(gap, []).append(word)
        for gap in sorted(by_gap, reverse=True):
            offset = spans[gap][0] if gap < len(spans) else len(current)
            left, right = current[:offset].rstrip(), current[offset:].lstrip()
            middle = " ".join(by_gap[gap])
            current = left + (" " if left else "") + middle + (" " if right else "") + right
        out[seg] = current
    return out, gaps


def _truncate_words(tokenizer, text: str, keep: int) -> str:
    """`text` cut after its last whole word that fits in the first `keep` tokens."""
    if keep <= 0:
        return ""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    try:
        word_ids = enc.word_ids()
    except (NotImplementedError, ValueError):
        word_ids = list(range(len(enc["input_ids"])))
    offsets = enc["offset_mapping"]
    if keep >= len(word_ids):
        return text
    first_cut_word = word_ids[keep]
    end = 0
    for i in range(keep):
        if word_ids[i] != first_cut_word:
            end = max(end, offsets[i][1])
    return text[:end].rstrip()
