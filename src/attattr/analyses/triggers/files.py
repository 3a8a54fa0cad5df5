"""Files of the triggers analysis: the patterns file (write, load, validate) and the attack's
JSON and Markdown.

The patterns file is JSON Lines: a header (format, model id, tokenizer, settings, counts), then
one pattern a line, in rank order. Loading validates every line, so a hand-edited or damaged file
is refused with the file, the line and the reason, never half-used.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.errors import ResultFileError
from ...core.files import to_json, write_json, write_text
from .patterns import Pattern, PatternPair
from .words import PatternToken

if TYPE_CHECKING:
    from .attack import AttackReport
    from .mining import MiningResult

FORMAT = "attattr-patterns/1"


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
    lines = [to_json(header, indent=None)]
    for rank, p in enumerate(result.patterns, start=1):
        lines.append(to_json({"rank": rank, **p.to_dict()}, indent=None))
    return write_text(path, "\n".join(lines) + "\n")


def load_patterns(
    path: str | os.PathLike,
    *,
    model_id: str | None = None,
    tokenizer=None,
    num_labels: int | None = None,
    allow_other_model: bool = False,
) -> PatternFile:
    """Read and validate a patterns file.

    Every pattern line is checked (keys, types, positions within the source encoding, the class
    within `num_labels` or the header's label names); a bad line is refused with the file and line
    (ResultFileError). With `model_id` / `tokenizer`, a file mined with another model or tokenizer
    is refused too, or accepted with a warning when `allow_other_model`."""
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
    classes = num_labels
    if classes is None and isinstance(header.get("label_names"), list):
        classes = len(header["label_names"])
    patterns = []
    for number, line in lines[1:]:
        try:
            patterns.append(pattern_from_record(json.loads(line), num_labels=classes))
        except json.JSONDecodeError as exc:
            raise ResultFileError(f"{path}, line {number}: malformed pattern (not JSON: {exc})") from None
        except ValueError as exc:
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


# ---- validating one pattern line -----------------------------------------------------------
_TOKEN_KEYS = ("position", "piece", "special", "segment", "word", "word_index", "segment_words")
_PATTERN_KEYS = (
    "example_id",
    "layer",
    "head",
    "pairs",
    "tokens",
    "segment_boundary",
    "predicted",
    "predicted_name",
    "label",
)


def pattern_from_record(record: Any, *, num_labels: int | None = None) -> Pattern:
    """The pattern of one line of a patterns file; ValueError naming the first problem found."""
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    missing = [k for k in _PATTERN_KEYS if k not in record]
    if missing:
        raise ValueError(f"missing {', '.join(map(repr, missing))}")
    known = {*_PATTERN_KEYS, "rank", "score", "text", "text_pair", "num_tokens"}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"unknown {', '.join(map(repr, unknown))}")
    n = _int(record, "num_tokens", low=1) if "num_tokens" in record else None
    if not isinstance(record["example_id"], str | int | type(None)) or isinstance(record["example_id"], bool):
        raise ValueError("'example_id' must be a string or null")
    layer = _int(record, "layer", low=0)
    head = _int(record, "head", low=0)
    predicted = _int(record, "predicted", low=0, high=num_labels, what="class")
    label = None if record["label"] is None else _int(record, "label", low=0, high=num_labels, what="class")
    if not isinstance(record["predicted_name"], str):
        raise ValueError("'predicted_name' must be a string")
    for key in ("text", "text_pair"):
        if key in record and not isinstance(record[key], str | type(None)):
            raise ValueError(f"{key!r} must be a string")
    if not isinstance(record["tokens"], list) or not record["tokens"]:
        raise ValueError("'tokens' must be a non-empty list")
    tokens = [_token(t, n) for t in record["tokens"]]
    positions = {t.position for t in tokens}
    if not isinstance(record["pairs"], list) or not 1 <= len(record["pairs"]) <= 2:
        raise ValueError("'pairs' must be a list of one or two pairs")
    pairs = [_pair(p, n, positions) for p in record["pairs"]]
    boundary = _int(record, "segment_boundary", low=0, high=None if n is None else n + 1)
    return Pattern(
        example_id=None if record["example_id"] is None else str(record["example_id"]),
        layer=layer,
        head=head,
        pairs=pairs,
        tokens=tokens,
        segment_boundary=boundary,
        predicted=predicted,
        predicted_name=record["predicted_name"],
        label=label,
        text=record.get("text") or "",
        text_pair=record.get("text_pair"),
        num_tokens=n or 0,
    )


def _int(d: dict[str, Any], key: str, *, low: int, high: int | None = None, what: str = "") -> int:
    """d[key] as an integer in [low, high) (high None: no upper bound)."""
    value = d.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be an integer, got {json.dumps(value)}")
    if value < low or (high is not None and value >= high):
        span = f"{low}..{high - 1}" if high is not None else f">= {low}"
        raise ValueError(f"{key!r} {value} is out of range ({what + ' ' if what else ''}{span})")
    return value


def _token(t: Any, n: int | None) -> PatternToken:
    if not isinstance(t, dict):
        raise ValueError("every entry of 'tokens' must be an object")
    missing = [k for k in _TOKEN_KEYS if k not in t]
    if missing:
        raise ValueError(f"a token is missing {', '.join(map(repr, missing))}")
    position = _int(t, "position", low=0, high=n)
    segment = _int(t, "segment", low=0, high=2)
    words = _int(t, "segment_words", low=0)
    index = _int(t, "word_index", low=-1, high=max(words, 0))
    for key in ("piece", "word"):
        if not isinstance(t[key], str):
            raise ValueError(f"token {key!r} must be a string")
    if not isinstance(t["special"], bool):
        raise ValueError("token 'special' must be true or false")
    return PatternToken(position, t["piece"], t["special"], segment, t["word"], index, words)


def _pair(p: Any, n: int | None, positions: set[int]) -> PatternPair:
    if not isinstance(p, dict) or {"query", "key", "score"} - set(p):
        raise ValueError("every pair needs 'query', 'key' and 'score'")
    query, key = _int(p, "query", low=0, high=n), _int(p, "key", low=0, high=n)
    for pos in (query, key):
        if pos not in positions:
            raise ValueError(f"pair position {pos} has no entry in 'tokens'")
    score = p["score"]
    if not isinstance(score, int | float) or isinstance(score, bool) or not math.isfinite(score):
        raise ValueError(f"pair 'score' must be a finite number, got {json.dumps(score)}")
    return PatternPair(query, key, float(score))


# ---- the attack's files --------------------------------------------------------------------
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


def write_attack(out: str | os.PathLike, report: AttackReport) -> list[Path]:
    """`attack.json` (everything) and `attack.md` (the table) in the folder `out`, each atomic."""
    out = Path(out)
    return [
        write_json(out / "attack.json", report.to_json()),
        write_text(out / "attack.md", attack_markdown(report)),
    ]
