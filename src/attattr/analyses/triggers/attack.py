"""The non-targeted attack with a random-token control (docs/triggers.md).

Each trigger word of a selected pattern is inserted into every evaluation example at the same
relative word position within the same segment it had in its source example (see `words`), the
text is tokenised again, and accuracy per gold class is compared before and after, against a
control that inserts as many random vocabulary tokens at the same places.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...core.errors import DataError, InputError
from ...data import Dataset, check_labels
from .files import attack_markdown
from .patterns import TOP2_RATIO, Pattern, trigger_tokens
from .words import TriggerWord, insert_words, word_pieces

MIN_SCORE = 0.02  # patterns whose score sum is lower are not used for the attack

_UNUSED = re.compile(r"^(\[unused\d+\]|<unused\d+>|\[PAD\d*\]|<extra_id_\d+>)$")


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
        k = len(word_pieces(tokenizer, w.word)) if tokenizer is not None else max(1, w.pieces)
        for _ in range(max(1, k)):
            out.append(TriggerWord(rng.choice(vocabulary), w.segment, w.relative, w.source_position, 1))
    return out


# ---- results -------------------------------------------------------------------------------
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


# ---- the attack ----------------------------------------------------------------------------
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
    """The non-targeted attack with a random-token control; see the module docstring.

    For each selected pattern: accuracy per gold class of `dataset` before and after inserting its
    trigger, and after inserting as many random vocabulary tokens at the same places (one random
    draw per seed, applied to every example; mean and sample std over seeds). A trigger is
    adversarial on a class when its accuracy drop is positive and exceeds the control's drop by
    more than `control_sigmas` standard deviations of the control.

    With `label_names` (the model's), a `data.Dataset` has its labels checked against them: a label
    the model does not know is refused (DataError), and named labels are re-indexed by name.
    """
    from ...core.encoding import model_max_length, predict

    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size!r}")
    num_labels = int(model.config.num_labels)
    dataset = match_labels(dataset, label_names, num_labels)
    examples = list(dataset)
    if not examples:
        raise DataError("the evaluation data has no examples")
    if any(ex.label is None for ex in examples):
        raise DataError("the attack needs gold labels; some evaluation examples have none")
    if not seeds:
        raise InputError("at least one control seed is needed")
    chosen = select_patterns(patterns, top=top, min_score=min_score, ratio=ratio)
    max_length = max_length or model_max_length(model, tokenizer)
    names = label_names or getattr(dataset, "label_names", None) or [str(i) for i in range(num_labels)]
    labels = torch.tensor([int(ex.label) for ex in examples])  # [examples]
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
        )  # [examples, classes]
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


def match_labels(dataset, label_names: Sequence[str] | None, num_labels: int):
    """With the model's `label_names`, a `data.Dataset`'s labels as the model's class indices
    (`data.check_labels`: unknown labels refused); otherwise the examples as they are (their labels
    must already be class indices)."""
    if label_names and isinstance(dataset, Dataset):
        return check_labels(dataset, label_names, num_labels=num_labels)
    return dataset


def attack_evaluations(num_patterns: int, num_seeds: int, num_examples: int) -> int:
    """How many example predictions an attack makes (for a progress bar's total)."""
    return num_examples * (1 + num_patterns * (1 + num_seeds))
