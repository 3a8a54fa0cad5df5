"""Adversarial triggers mined from attribution patterns, and the non-targeted attack
(docs/triggers.md).

The package by job:

- `patterns`  the Pattern types, mining one attribution, a pattern's trigger words
- `words`     word pieces and whole words, insertion at relative word positions per segment
- `mining`    mining a dataset (one pattern per example, resumable), ranking
- `attack`    the control vocabulary, the attack and its statistics
- `files`     the patterns file (write, load, validate), the attack's JSON and Markdown
"""

from __future__ import annotations

from .attack import (
    MIN_SCORE,
    AttackReport,
    ClassResult,
    PatternResult,
    attack,
    attack_evaluations,
    control_vocabulary,
    control_words,
    match_labels,
    select_patterns,
)
from .files import (
    FORMAT,
    PatternFile,
    attack_markdown,
    load_patterns,
    pattern_from_record,
    write_attack,
    write_patterns,
)
from .mining import (
    MIN_TOKENS,
    ORDERS,
    MiningResult,
    mine_patterns,
    mining_settings,
    sample_indices,
    tokenizer_info,
)
from .patterns import (
    TOP2_RATIO,
    Pattern,
    PatternPair,
    insert_trigger,
    mine_pattern,
    rank_patterns,
    trigger_tokens,
)
from .words import (
    Inserted,
    PatternToken,
    TriggerWord,
    insert_words,
    segment_boundary,
    source_words,
    word_spans,
)

__all__ = [
    "FORMAT",
    "MIN_SCORE",
    "MIN_TOKENS",
    "ORDERS",
    "TOP2_RATIO",
    "AttackReport",
    "ClassResult",
    "Inserted",
    "MiningResult",
    "Pattern",
    "PatternFile",
    "PatternPair",
    "PatternResult",
    "PatternToken",
    "TriggerWord",
    "attack",
    "attack_evaluations",
    "attack_markdown",
    "control_vocabulary",
    "control_words",
    "insert_trigger",
    "insert_words",
    "load_patterns",
    "match_labels",
    "mine_pattern",
    "mine_patterns",
    "mining_settings",
    "pattern_from_record",
    "rank_patterns",
    "sample_indices",
    "segment_boundary",
    "select_patterns",
    "source_words",
    "tokenizer_info",
    "trigger_tokens",
    "word_spans",
    "write_attack",
    "write_patterns",
]
