"""Adversarial triggers mined from attribution patterns, and the non-targeted attack (SPEC §4).

Mining: for one example's attribution of the predicted class, the head holding the largest entry
over all layers gives a *pattern*: that head's top-2 entries (query i, key j), their scores, the
tokens at i and j (as word pieces and as the whole words they belong to), the segment boundary and
the predicted label. Patterns are ranked by the sum of the two scores.

Attack: a pattern's trigger is the top-1 pair's tokens, plus the top-2 pair's tokens when its
score is at least `ratio` (0.2) times the top-1 score; special tokens are dropped and a word is
inserted once even when several of its pieces were picked. Each trigger word is inserted into
every evaluation example at the same *relative word position* within the same segment it had in
its source example, the text is tokenised again, and accuracy per gold class is compared before
and after, against a control that inserts as many random vocabulary tokens at the same places.

Word pieces. A piece such as `##able` cannot be inserted on its own: it would be tokenised into
something else. The trigger is therefore the *whole word* containing the piece, exactly as it is
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

import json
import math
import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.encoding import token_count
from ...core.errors import DataError, InputError, ResultFileError
from ...core.result import Attribution

FORMAT = "attattr-patterns/1"
TOP2_RATIO = 0.2  # the second pair joins the trigger when its score >= 0.2 x the first's (SPEC §4)
MIN_TOKENS = 15  # inputs shorter than this (special tokens included) are skipped when mining
MIN_SCORE = 0.02  # patterns whose score sum is lower are not used for the attack
ORDERS = ("random", "first")  # which examples are mined: a seeded sample, or the first N

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>|\[PAD\d*\]|<extra_id_\d+>)$")
_UNKNOWN = {"[UNK]", "<unk>", "<UNK>"}  # flagged special by the engine, but not separators
_PIECE_MARKS = ("Ġ", "▁")  # byte-level BPE / SentencePiece word-start marks


# ---- data ----------------------------------------------------------------------------------
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
        d = dict(d)
        d.pop("score", None)
        d["pairs"] = [PatternPair(**p) for p in d["pairs"]]
        d["tokens"] = [PatternToken(**t) for t in d["tokens"]]
        return cls(**d)


def _show(t: PatternToken) -> str:
    return t.piece if t.special or t.word == t.piece else f"{t.piece}({t.word})"


@dataclass
class TriggerWord:
    """A word to insert: where it came from (segment, relative position) and its word pieces."""

    word: str
    segment: int
    relative: float
    source_position: int
    pieces: int  # number of word pieces the word has on its own


# ---- mining --------------------------------------------------------------------------------
def mine_pattern(attribution: Attribution, tokenizer=None) -> Pattern | None:
    """The pattern of one example (SPEC §4), or None when there is nothing to mine.

    `attribution` should attribute the predicted class. With a `tokenizer`, whole words are found
    from its offsets in the source text; without one (or when the source text does not encode to
    the same tokens) they are rebuilt from the pieces (`##`, `Ġ`, `▁` conventions).
    """
    scores = attribution.scores.detach().float()  # [layers, heads, n, n]
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
    words = _source_words(attribution, tokenizer)
    positions = sorted({p for pair in pairs for p in (pair.query, pair.key)})
    tokens = [words[p] for p in positions]
    return Pattern(
        example_id=attribution.example_id,
        layer=int(attribution.layers[li]),
        head=int(h),
        pairs=pairs,
        tokens=tokens,
        segment_boundary=segment_boundary(attribution.special_mask, attribution.tokens),
        predicted=int(attribution.predicted),
        predicted_name=attribution.label_name(int(attribution.predicted)),
        label=attribution.label,
        text=attribution.text,
        text_pair=attribution.text_pair,
        num_tokens=attribution.num_tokens,
    )


def segment_boundary(special_mask: Sequence[bool], tokens: Sequence[str] | None = None) -> int:
    """Index of the first separator: the first special token after position 0 that is not the
    unknown-word token (n if none)."""
    for i, special in enumerate(special_mask):
        if i > 0 and special and (tokens is None or tokens[i] not in _UNKNOWN):
            return i
    return len(special_mask)


def _source_words(attr: Attribution, tokenizer) -> list[PatternToken]:
    """Per position of the attribution: its segment, whole word and word index."""
    n = attr.num_tokens
    if tokenizer is not None and attr.text:
        found = _words_from_offsets(attr, tokenizer)
        if found is not None:
            return found
    # From the pieces alone: a piece starts a new word unless it is a continuation (`##x`), or,
    # for byte-level BPE / SentencePiece vocabularies, unless it lacks the word-start mark.
    marked = any(t.startswith(_PIECE_MARKS) for t in attr.tokens)
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
            if tok in _UNKNOWN:  # an unknown word is still a word of the text (never inserted)
                counter[seg] += 1
            previous_special = True
            continue
        starts = (
            previous_special
            or (marked and tok.startswith(_PIECE_MARKS))
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
        word = "".join(p[2:] if p.startswith("##") else p.lstrip("".join(_PIECE_MARKS)) for p in pieces)
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
    """Mine one pattern per example for `examples` examples of `dataset` (SPEC §4).

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


def rank_patterns(patterns: Iterable[Pattern]) -> list[Pattern]:
    """By score sum, largest first; ties keep the input (dataset) order."""
    return sorted(patterns, key=lambda p: -p.score)


def tokenizer_info(tokenizer) -> dict[str, Any]:
    return {"name": str(getattr(tokenizer, "name_or_path", "") or ""), "vocab_size": len(tokenizer)}


def _model_id(model) -> str:
    return str(getattr(model.config, "name_or_path", "") or type(model).__name__)


# ---- the patterns file ---------------------------------------------------------------------
@dataclass
class PatternFile:
    header: dict[str, Any]
    patterns: list[Pattern]

    @property
    def model_id(self) -> str | None:
        return self.header.get("model_id")


def write_patterns(path: str | os.PathLike, result: MiningResult, **extra: Any) -> Path:
    """JSON Lines: a header (format, model id, tokenizer, settings, counts), then one pattern a line,
    in rank order. Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "format": FORMAT,
        "model_id": result.settings.get("model_id"),
        "tokenizer": result.settings.get("tokenizer"),
        "settings": result.settings,
        "considered": result.considered,
        "skipped": result.skipped,
        "count": len(result.patterns),
        **extra,
    }
    lines = [json.dumps(header)]
    for rank, p in enumerate(result.patterns, start=1):
        lines.append(json.dumps({"rank": rank, **p.to_dict()}))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def load_patterns(
    path: str | os.PathLike,
    *,
    model_id: str | None = None,
    tokenizer=None,
    allow_other_model: bool = False,
) -> PatternFile:
    """Read a patterns file. With `model_id` / `tokenizer`, a file mined with another model or
    tokenizer is refused (ResultFileError), or accepted with a warning when `allow_other_model`."""
    path = Path(path)
    if not path.is_file():
        raise ResultFileError(f"patterns file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"cannot read patterns file {path}: {exc}") from None
    lines = [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]
    if not lines:
        raise ResultFileError(f"patterns file {path} is empty")
    try:
        header = json.loads(lines[0][1])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ResultFileError(
            f"{path} is not an attattr patterns file (line 1 must be a header with format {FORMAT!r}; "
            "write one with `attattr triggers mine`)"
        )
    patterns = []
    for number, line in lines[1:]:
        try:
            patterns.append(Pattern.from_dict({k: v for k, v in json.loads(line).items() if k != "rank"}))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
            raise ResultFileError(f"{path}, line {number}: malformed pattern ({exc})") from None
    problems = []
    if model_id is not None and header.get("model_id") != model_id:
        problems.append(f"model {header.get('model_id')!r}, not {model_id!r}")
    if tokenizer is not None:
        recorded = header.get("tokenizer") or {}
        if recorded.get("vocab_size") != len(tokenizer):
            problems.append(f"a tokenizer with {recorded.get('vocab_size')} tokens, not {len(tokenizer)}")
    if problems:
        message = f"{path} was mined with {' and '.join(problems)}"
        if not allow_other_model:
            raise ResultFileError(
                message + "; its token positions and words may mean nothing here "
                "(pass allow_other_model / --allow-other-model to use it anyway)"
            )
        warnings.warn(message + "; using it anyway", UserWarning, stacklevel=2)
    return PatternFile(header=header, patterns=patterns)


# ---- triggers and insertion ----------------------------------------------------------------
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
        pieces = len(_pieces(tokenizer, t.word)) if tokenizer is not None else 1
        out.append(TriggerWord(t.word, t.segment, t.relative, t.position, pieces))
    return out


@dataclass
class Inserted:
    """An evaluation example with words inserted (texts ready to be tokenised again)."""

    text: str
    text_pair: str | None
    truncated: bool  # the example's own tokens had to be cut to make room
    num_tokens: int  # length of the new encoding, special tokens included
    gaps: list[tuple[int, int]]  # per inserted word: (segment, gap index in the target's words)


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
    text, pair = _texts(example)
    return insert_words(tokenizer, text, pair, words, max_length)


def insert_words(
    tokenizer, text: str, text_pair: str | None, words: Sequence[TriggerWord], max_length: int
) -> Inserted:
    if not words:
        raise InputError("nothing to insert (the trigger has no non-special tokens)")
    for w in words:
        if _is_special_word(tokenizer, w.word):
            raise InputError(f"refusing to insert the special token {w.word!r}")
    has_pair = text_pair is not None
    targets = [(w, 1 if (w.segment == 1 and has_pair) else 0) for w in words]
    trigger_len = sum(len(_pieces(tokenizer, w.word)) for w in words)
    specials = tokenizer.num_special_tokens_to_add(pair=has_pair)
    budget = max_length - specials - trigger_len
    if budget < (2 if has_pair else 1):
        raise InputError(
            f"the trigger ({trigger_len} tokens) leaves no room for the example within {max_length} tokens"
        )
    own = [len(_pieces(tokenizer, text)), len(_pieces(tokenizer, text_pair)) if has_pair else 0]
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


def _pieces(tokenizer, text: str | None) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _is_special_word(tokenizer, word: str) -> bool:
    specials = {t for t in getattr(tokenizer, "all_special_tokens", [])}
    unk = getattr(tokenizer, "unk_token", None)
    return word.strip() in (specials - {unk}) or not _pieces(tokenizer, word)


def _texts(example) -> tuple[str, str | None]:
    if isinstance(example, str):
        return example, None
    if isinstance(example, tuple):
        return example[0], (example[1] if len(example) > 1 else None)
    return example.text, getattr(example, "text_pair", None)


# ---- control vocabulary --------------------------------------------------------------------
def control_vocabulary(tokenizer) -> list[str]:
    """Vocabulary entries usable as random control words: not special, not unused/reserved slots,
    not word-continuation pieces, and encoding on their own back to exactly that one token."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    vocab = tokenizer.get_vocab()
    ids, words = [], []
    for tok, idx in sorted(vocab.items(), key=lambda kv: kv[1]):
        if idx in special or _UNUSED.match(tok) or tok.startswith("##"):
            continue
        word = tokenizer.convert_tokens_to_string([tok]).strip()
        if not word:
            continue
        ids.append(idx)
        words.append(word)
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    return [w for w, idx, enc in zip(words, ids, encoded, strict=True) if list(enc) == [idx]]


def control_words(
    trigger: Sequence[TriggerWord], vocabulary: Sequence[str], rng: random.Random, tokenizer=None
) -> list[TriggerWord]:
    """As many random one-token words as the trigger has word pieces, at the trigger's places."""
    out = []
    for w in trigger:
        k = len(_pieces(tokenizer, w.word)) if tokenizer is not None else max(1, w.pieces)
        for _ in range(max(1, k)):
            out.append(TriggerWord(rng.choice(vocabulary), w.segment, w.relative, w.source_position, 1))
    return out


# ---- the attack ----------------------------------------------------------------------------
@dataclass
class ClassResult:
    label: int | None  # None for all examples together
    name: str
    n: int
    before: float  # accuracy on the unedited examples
    after: float  # accuracy with the trigger inserted
    control_mean: float  # accuracy with random tokens inserted, mean over seeds
    control_std: float  # sample standard deviation over seeds (0 with one seed)
    drop: float  # before - after
    control_drop: float  # before - control_mean
    margin: float  # drop - control_drop = control_mean - after
    adversarial: bool  # drop > 0 and margin > control_sigmas x control_std (and > 0)


@dataclass
class PatternResult:
    rank: int  # rank of the pattern in the patterns file (1 = highest score sum)
    example_id: str | None
    source_class: int
    source_name: str
    layer: int
    head: int
    score: float
    pattern: str  # the pairs, as text
    trigger: list[str]  # the words inserted
    per_class: list[ClassResult]
    overall: ClassResult
    adversarial: bool  # adversarial on at least one gold class
    truncated: int  # evaluation examples whose own tokens were cut to make room


@dataclass
class AttackReport:
    classes: list[str]
    class_sizes: list[int]
    before: list[float]  # accuracy per gold class, unedited
    before_overall: float
    results: list[PatternResult]
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        return attack_markdown(self)


def select_patterns(
    patterns: Sequence[Pattern], *, top: int = 3, min_score: float = MIN_SCORE, ratio: float = TOP2_RATIO
) -> list[tuple[int, Pattern]]:
    """The best `top` patterns per predicted class with score sum >= min_score and at least one
    insertable word, as (rank in the input, pattern); identical triggers are evaluated once."""
    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    if not patterns:
        raise InputError("the patterns file holds no patterns")
    if top > len(patterns):
        raise InputError(f"--top {top} is larger than the number of patterns in the file ({len(patterns)})")
    ranked = sorted(enumerate(patterns, start=1), key=lambda rp: (-rp[1].score, rp[0]))
    chosen: list[tuple[int, Pattern]] = []
    per_class: dict[int, int] = {}
    seen: set[tuple[int, tuple]] = set()
    for rank, p in ranked:
        if p.score < min_score or per_class.get(p.predicted, 0) >= top:
            continue
        words = trigger_tokens(p, ratio=ratio)
        if not words:
            continue
        key = (p.predicted, tuple((w.word.lower(), w.segment, round(w.relative, 3)) for w in words))
        if key in seen:
            continue
        seen.add(key)
        per_class[p.predicted] = per_class.get(p.predicted, 0) + 1
        chosen.append((rank, p))
    if not chosen:
        raise InputError(
            f"no pattern has a score sum >= {min_score} and an insertable (non-special) token; "
            "lower --min-score or mine more examples"
        )
    return chosen


def attack(
    model,
    tokenizer,
    patterns: Sequence[Pattern],
    dataset,
    *,
    top: int = 3,
    min_score: float = MIN_SCORE,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    ratio: float = TOP2_RATIO,
    control_sigmas: float = 2.0,
    batch_size: int = 32,
    max_length: int | None = None,
    label_names: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AttackReport:
    """The non-targeted attack (SPEC §4) with a random-token control; see the module docstring.

    For each selected pattern: accuracy per gold class of `dataset` before and after inserting its
    trigger, and after inserting as many random vocabulary tokens at the same places (one random
    draw per seed, applied to every example; mean and sample std over seeds). A trigger is
    adversarial on a class when its accuracy drop is positive and exceeds the control's drop by
    more than `control_sigmas` standard deviations of the control.
    """
    from ...core.encoding import model_max_length, predict

    examples = list(dataset)
    if not examples:
        raise DataError("the evaluation data has no examples")
    if any(ex.label is None for ex in examples):
        raise DataError("the attack needs gold labels; some evaluation examples have none")
    if not seeds:
        raise InputError("at least one control seed is needed")
    chosen = select_patterns(patterns, top=top, min_score=min_score, ratio=ratio)
    max_length = max_length or model_max_length(model, tokenizer)
    num_labels = int(model.config.num_labels)
    names = label_names or getattr(dataset, "label_names", None) or [str(i) for i in range(num_labels)]
    labels = torch.tensor([int(ex.label) for ex in examples])
    if int(labels.max()) >= num_labels or int(labels.min()) < 0:
        raise DataError(f"gold labels outside the model's {num_labels} classes")
    classes = sorted(set(labels.tolist()))
    vocabulary = control_vocabulary(tokenizer)
    if not vocabulary:
        raise InputError("the tokenizer's vocabulary has no usable control tokens")

    def correct(texts: list[str], pairs: list[str | None]) -> torch.Tensor:
        # predict in order of length (less padding), then put the predictions back in place
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]) + len(pairs[i] or ""))
        probs = predict(
            model,
            tokenizer,
            [texts[i] for i in order],
            [pairs[i] for i in order] if any(p is not None for p in pairs) else None,
            batch_size=batch_size,
            max_length=max_length,
            on_batch=progress,
        )
        predicted = torch.empty(len(texts), dtype=torch.long)
        predicted[torch.tensor(order, dtype=torch.long)] = probs.argmax(dim=-1)
        return predicted == labels

    def accuracy(ok: torch.Tensor) -> list[float]:
        return [float(ok[labels == c].float().mean()) for c in classes] + [float(ok.float().mean())]

    base = accuracy(correct([ex.text for ex in examples], [ex.text_pair for ex in examples]))
    results = []
    for rank, p in chosen:
        words = trigger_tokens(p, ratio=ratio, tokenizer=tokenizer)
        edited = [insert_words(tokenizer, ex.text, ex.text_pair, words, max_length) for ex in examples]
        after = accuracy(correct([e.text for e in edited], [e.text_pair for e in edited]))
        controls = []
        for seed in seeds:
            # one draw per (seed, pattern); string seeding keeps it stable across Python runs
            rng = random.Random(f"{seed}:{rank}")
            cwords = control_words(words, vocabulary, rng, tokenizer)
            cedit = [insert_words(tokenizer, ex.text, ex.text_pair, cwords, max_length) for ex in examples]
            controls.append(accuracy(correct([e.text for e in cedit], [e.text_pair for e in cedit])))
        ctrl = torch.tensor(controls, dtype=torch.float64)  # [seeds, classes + 1]
        mean = ctrl.mean(dim=0).tolist()
        std = (ctrl.std(dim=0, unbiased=True) if len(seeds) > 1 else torch.zeros(ctrl.shape[1])).tolist()
        rows = []
        for k, c in enumerate([*classes, None]):
            drop, cdrop = base[k] - after[k], base[k] - mean[k]
            margin = drop - cdrop
            rows.append(
                ClassResult(
                    label=c,
                    name=names[c] if c is not None and c < len(names) else ("all" if c is None else str(c)),
                    n=int((labels == c).sum()) if c is not None else len(examples),
                    before=base[k],
                    after=after[k],
                    control_mean=mean[k],
                    control_std=std[k],
                    drop=drop,
                    control_drop=cdrop,
                    margin=margin,
                    adversarial=bool(drop > 0 and margin > 0 and margin > control_sigmas * std[k]),
                )
            )
        per_class, overall = rows[:-1], rows[-1]
        results.append(
            PatternResult(
                rank=rank,
                example_id=p.example_id,
                source_class=p.predicted,
                source_name=p.predicted_name,
                layer=p.layer,
                head=p.head,
                score=p.score,
                pattern=p.describe(),
                trigger=[w.word for w in words],
                per_class=per_class,
                overall=overall,
                adversarial=any(r.adversarial for r in per_class),
                truncated=sum(e.truncated for e in edited),
            )
        )
    settings = {
        "top": top,
        "min_score": min_score,
        "seeds": list(seeds),
        "ratio": ratio,
        "control_sigmas": control_sigmas,
        "max_length": max_length,
        "examples": len(examples),
        "dataset": getattr(dataset, "name", None),
        "split": getattr(dataset, "split", None),
        "control_vocabulary": len(vocabulary),
    }
    return AttackReport(
        classes=[names[c] if c < len(names) else str(c) for c in classes],
        class_sizes=[int((labels == c).sum()) for c in classes],
        before=base[:-1],
        before_overall=base[-1],
        results=results,
        settings=settings,
    )


def attack_evaluations(num_patterns: int, num_seeds: int, num_examples: int) -> int:
    """How many example predictions an attack makes (for a progress bar's total)."""
    return num_examples * (1 + num_patterns * (1 + num_seeds))


def attack_markdown(report: AttackReport) -> str:
    """A markdown table: one row per pattern, per class accuracy before → after (control)."""
    head = ["#", "trigger", "source class", "layer-head", "score"]
    for name in report.classes:
        head += [f"{name}: before → after (control)", f"{name}: drop − control drop"]
    head.append("adversarial")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.results:
        row = [
            str(r.rank),
            " ".join(f"`{w}`" for w in r.trigger),
            r.source_name,
            f"{r.layer}-{r.head}",
            f"{r.score:.3f}",
        ]
        for c in r.per_class:
            row.append(f"{c.before:.3f} → {c.after:.3f} ({c.control_mean:.3f} ± {c.control_std:.3f})")
            row.append(f"{c.margin:+.3f}")
        row.append("yes" if r.adversarial else "no")
        lines.append("| " + " | ".join(row) + " |")
    s = report.settings
    lines.append("")
    lines.append(
        f"{s['examples']} evaluation examples; control: random vocabulary tokens at the same places, "
        f"mean ± std over seeds {s['seeds']}. Adversarial on a class = accuracy drop > 0 and "
        f"drop − control drop > {s['control_sigmas']} × control std."
    )
    return "\n".join(lines) + "\n"
