"""Prompt datasets for causal LMs: each example is a prompt, a target continuation and a foil.

Two sources, both reachable by name or path wherever a command takes `--data`:

* generated sets, seeded (the same seed, split and count give the same prompts on every machine,
  and a smaller count gives a prefix of a larger one):
  - `ioi`, indirect-object identification (Wang et al. 2022): "When Mary and John went to the
    store, John gave a drink to" -> target " Mary" (the indirect object), foil " John" (the
    subject); ABBA and BABA orders alternate; names, places, objects and templates vary.
    Metric: logit(target) - logit(foil) at the predicting position.
  - `greater-than` (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17".
    Tokenizers that write digits one by one (SmolLM2, Llama 3, Qwen) predict the tens digit next,
    so the target is the set of tens digits above the start year's (4..9), the foil the set below
    (0..2), and the tie digit (3) is in neither. Metric: the probability mass of the target digits
    minus that of the foil digits at the predicting position (docs/decoders.md).
* the user's JSON Lines, CSV or TSV files with a prompt, a target and (optionally) a foil column.
  In JSON Lines a target or foil may also be a list of single-token alternatives, scored like
  greater-than's digit sets.

Bad input is refused with one line naming the row: an empty prompt, an empty target or foil, a
foil equal to the target, a missing column; with a tokenizer (`check_tokens`), also a target or
foil that tokenises to nothing, and alternatives that are not single tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.encoding import continuation_ids as _continuation_ids
from .core.errors import DataError
from .data import FILE_EXTENSIONS, ID_COLUMNS, SPLITS, ExampleList
from .data import _read_rows as read_rows

PROMPT_SEED = 20221101  # the default seed of the generated sets
LOGIT_DIFF = "logit-diff"  # logit(target) - logit(foil) at the predicting position
PROB_DIFF = "prob-diff"  # sum p(target alternatives) - sum p(foil alternatives) there
LOGPROB = "logprob"  # log p(target continuation | prompt), teacher-forced (no foil)
METRICS = (LOGIT_DIFF, PROB_DIFF, LOGPROB)

Choice = str | tuple[str, ...]  # one continuation, or a set of single-token alternatives


@dataclass(frozen=True)
class PromptExample:
    """One prompt. `target` and `foil` are a continuation each (str), or sets of single-token
    alternatives (tuples); `info` keeps how a generated example was made (names, years, template)."""

    id: str
    prompt: str
    target: Choice
    foil: Choice | None = None
    info: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def targets(self) -> tuple[str, ...]:
        return self.target if isinstance(self.target, tuple) else (self.target,)

    @property
    def foils(self) -> tuple[str, ...]:
        if self.foil is None:
            return ()
        return self.foil if isinstance(self.foil, tuple) else (self.foil,)


@dataclass
class PromptSet(ExampleList[PromptExample]):
    """Prompts of one split and the metric that scores a model's prediction on them."""

    name: str
    split: str
    examples: list[PromptExample]
    metric: str
    source: str = ""  # "generated" or the file read
    seed: int | None = None  # generated sets: the seed they were drawn with

    @property
    def prompts(self) -> list[str]:
        return [ex.prompt for ex in self.examples]

    @property
    def has_foils(self) -> bool:
        return any(ex.foil is not None for ex in self.examples)

    def fingerprint(self) -> str:
        """sha256 over ids, prompts, targets and foils: equal means the same prompts in the same order."""
        digest = hashlib.sha256(self.metric.encode())
        for ex in self.examples:
            row = [ex.id, ex.prompt, list(ex.targets), list(ex.foils)]
            digest.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
        return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Generated sets
# ---------------------------------------------------------------------------------------------
# First names that SmolLM2's tokenizer writes as one token after a space (" Mary" -> "ĠMary");
# tests/unit/test_prompts.py checks every one against the shipped vocabulary.
IOI_NAMES = (
    "Mary John Alice Bob James Michael Sarah David Emma Daniel Laura Paul Anna Thomas Lisa Mark "
    "Susan Peter Karen Kevin Robert Linda William Richard Joseph Charles Jessica Nancy Helen Steven "
    "Andrew Carol Ruth George Michelle Edward Emily Brian Amy Jason Rachel Ryan Jacob Eric Frank "
    "Samuel Patrick Jack Henry Adam Nathan Ethan Grace Julia Rose Victoria Kate Sophie Lucy Tom "
    "Max Sam Jane Anne Claire Martin Simon Oliver Harry Alex Luke Leo Diana Clara Ella"
).split()
IOI_PLACES = (
    "store park school garden hospital station restaurant office library beach market museum kitchen church"
).split()
IOI_OBJECTS = (
    "drink book ring letter key gift ball flower snack bag pen coin apple orange basketball "
    "necklace computer sandwich"
).split()
# {first} and {second} are the two names in the order of the sentence (ABBA: indirect object
# first; BABA: subject first); {subject} is repeated; the prompt stops where the indirect object
# is due. Written for this project after the protocol of Wang et al. (2022, appendix). Every verb
# phrase ends in "to" followed by a person ("brought a drink to" was dropped: it is as often
# followed by a place).
IOI_TEMPLATES = (
    "When {first} and {second} went to the {place}, {subject} gave {a_object} to",
    "After {first} and {second} arrived at the {place}, {subject} handed {a_object} to",
    "While {first} and {second} were working at the {place}, {subject} passed {a_object} to",
    "Then, {first} and {second} had a long day at the {place}. {subject} gave {a_object} to",
    "When {first} and {second} got {a_object} at the {place}, {subject} decided to give it to",
    "{first} and {second} went to the {place} together. Later, {subject} gave {a_object} to",
    "The {place} was quiet when {first} and {second} came in. {subject} offered {a_object} to",
    "After lunch, {first} and {second} walked to the {place}. {subject} sent {a_object} to",
    "Then, {first} and {second} were thinking about going to the {place}. {subject} wanted to give {a_object} to",
    "Friends {first} and {second} found {a_object} at the {place}. {subject} gave it to",
)
# Events that last for years; the sentence is Hanna et al.'s (2023).
GT_NOUNS = (
    "war treaty expedition drought famine siege reign occupation strike dynasty blockade plague "
    "truce campaign rebellion crusade voyage partnership project construction trial conflict "
    "alliance embargo boycott migration revolution negotiation journey survey excavation "
    "renovation pilgrimage apprenticeship exile investigation"
).split()
GT_TEMPLATE = "The {noun} lasted from the year {century}{start:02d} to the year {century}"
GT_CENTURIES = tuple(range(11, 18))
GT_STARTS = tuple(range(10, 90))  # tens digit 1..8: digits above and below it both exist


@dataclass(frozen=True)
class GeneratedInfo:
    name: str
    description: str
    metric: str
    default_count: int
    paper: str


PROMPT_SETS: dict[str, GeneratedInfo] = {
    "ioi": GeneratedInfo(
        "ioi",
        "indirect-object identification: target = the indirect object, foil = the subject "
        f"({len(IOI_TEMPLATES)} templates, ABBA and BABA alternating, {len(IOI_NAMES)} single-token names)",
        LOGIT_DIFF,
        200,
        "Wang et al. 2022, Interpretability in the Wild",
    ),
    "greater-than": GeneratedInfo(
        "greater-than",
        "'The war lasted from the year 1732 to the year 17': target = tens digits above the start "
        "year's, foil = those below; the tie digit is in neither",
        PROB_DIFF,
        200,
        "Hanna et al. 2023, How does GPT-2 compute greater-than?",
    ),
}


def _rng(name: str, split: str, seed: int) -> random.Random:
    # a string seed is hashed (sha512) by random.Random: the same on every machine and version
    return random.Random(f"{name}/{split}/{seed}")


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def generate_ioi(count: int | None = None, *, seed: int = PROMPT_SEED, split: str = "dev") -> PromptSet:
    """`count` IOI prompts (default 200); even rows ABBA, odd rows BABA."""
    count = PROMPT_SETS["ioi"].default_count if count is None else count
    rng = _rng("ioi", split, seed)
    examples = []
    for i in range(count):
        order = "ABBA" if i % 2 == 0 else "BABA"
        template = rng.randrange(len(IOI_TEMPLATES))
        io, subject = rng.sample(IOI_NAMES, 2)
        place, obj = rng.choice(IOI_PLACES), rng.choice(IOI_OBJECTS)
        first, second = (io, subject) if order == "ABBA" else (subject, io)
        prompt = IOI_TEMPLATES[template].format(
            first=first, second=second, subject=subject, place=place, a_object=_with_article(obj)
        )
        info = {"order": order, "template": template, "io": io, "subject": subject, "place": place}
        examples.append(PromptExample(f"ioi-{i}", prompt, " " + io, " " + subject, info | {"object": obj}))
    return PromptSet("ioi", split, examples, LOGIT_DIFF, source="generated", seed=seed)


def generate_greater_than(
    count: int | None = None, *, seed: int = PROMPT_SEED, split: str = "dev"
) -> PromptSet:
    """`count` greater-than prompts (default 200) over centuries 11..17 and start years xx10..xx89."""
    count = PROMPT_SETS["greater-than"].default_count if count is None else count
    rng = _rng("greater-than", split, seed)
    examples = []
    for i in range(count):
        noun, century, start = rng.choice(GT_NOUNS), rng.choice(GT_CENTURIES), rng.choice(GT_STARTS)
        tens = start // 10
        prompt = GT_TEMPLATE.format(noun=noun, century=century, start=start)
        above = tuple(str(d) for d in range(tens + 1, 10))
        below = tuple(str(d) for d in range(tens))
        info = {"noun": noun, "century": century, "start": start, "tie": str(tens)}
        examples.append(PromptExample(f"greater-than-{i}", prompt, above, below, info))
    return PromptSet("greater-than", split, examples, PROB_DIFF, source="generated", seed=seed)


_GENERATORS = {"ioi": generate_ioi, "greater-than": generate_greater_than}


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def _column(columns: list[str], wanted: str, fallbacks: Sequence[str], what: str, path: Path) -> str:
    if wanted in columns:
        return wanted
    if wanted in fallbacks:  # a default name: accept the other usual one
        for name in fallbacks:
            if name in columns:
                return name
    raise DataError(f"{path} has no {what} column {wanted!r}; its columns are: {', '.join(columns)}")


def _choice(value: Any, what: str, where: str) -> Choice:
    """A cell as a continuation (str) or a set of alternatives (a JSON list of strings)."""
    if isinstance(value, str):
        if value == "":
            raise DataError(f"{where}: empty {what}")
        return value
    if isinstance(value, list):
        if not value:
            raise DataError(f"{where}: empty {what} list")
        if not all(isinstance(v, str) and v != "" for v in value):
            raise DataError(f"{where}: every {what} alternative must be non-empty text")
        if len(set(value)) != len(value):
            raise DataError(f"{where}: the {what} alternatives repeat a value")
        return tuple(value)
    if value is None:
        raise DataError(f"{where}: no {what}")
    raise DataError(f"{where}: the {what} must be text or a list of texts, not {type(value).__name__}")


def load_prompt_file(
    path: str | os.PathLike,
    split: str = "dev",
    *,
    prompt_column: str = "prompt",
    target_column: str = "target",
    foil_column: str | None = "foil",
) -> PromptSet:
    """The prompts of a .jsonl/.ndjson, .csv or .tsv file.

    prompt_column: default "prompt" ("text" is taken when there is no "prompt", and the other way
    round). target_column: required. foil_column: default "foil", optional (None or a file without
    that column: no foils; a column asked for by another name must exist). Ids come from an `id`,
    `idx` or `index` column, else the row number (from 0). Leading spaces in targets and foils are
    kept: " Mary" and "Mary" are different tokens for most tokenizers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_EXTENSIONS)}")
    columns, rows = read_rows(path)
    if not rows:
        raise DataError(f"{path} is empty (no prompts)")
    pcol = _column(columns, prompt_column, ("prompt", "text"), "prompt", path)
    tcol = _column(columns, target_column, (), "target", path)
    fcol = foil_column
    if fcol is not None and fcol not in columns:
        if fcol != "foil":  # asked for by name
            raise DataError(f"{path} has no foil column {fcol!r}; its columns are: {', '.join(columns)}")
        fcol = None
    id_col = next((c for c in ID_COLUMNS if c in columns), None)

    examples: list[PromptExample] = []
    seen: set[str] = set()
    for k, row in enumerate(rows):
        ex_id = str(row[id_col]).strip() if id_col and row.get(id_col) not in (None, "") else str(k)
        where = f"{path}: row {k + 1}" + (f" (id {ex_id!r})" if id_col else "")
        if ex_id in seen:
            raise DataError(f"{where}: id {ex_id!r} occurs twice")
        seen.add(ex_id)
        prompt = row.get(pcol)
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{where}: the prompt must be text, not {type(prompt).__name__}")
        if not prompt or not prompt.strip():
            raise DataError(f"{where}: empty prompt")
        target = _choice(row.get(tcol), "target", where)
        foil = _choice(row.get(fcol), "foil", where) if fcol is not None else None
        if foil is not None:
            _check_pair(target, foil, where)
        examples.append(PromptExample(ex_id, prompt, target, foil))
    return PromptSet(path.stem, split, examples, _file_metric(examples, path), source=str(path))


def _check_pair(target: Choice, foil: Choice, where: str) -> None:
    if isinstance(target, tuple) != isinstance(foil, tuple):
        raise DataError(f"{where}: the target and the foil must both be text or both be lists")
    if target == foil:
        raise DataError(f"{where}: the foil equals the target ({_show(target)})")
    if isinstance(target, tuple):
        shared = sorted(set(target) & set(foil))
        if shared:
            raise DataError(f"{where}: the target and the foil share {_show(tuple(shared))}")


def _file_metric(examples: list[PromptExample], path: Path) -> str:
    with_foil = [ex.foil is not None for ex in examples]
    if not any(with_foil):
        if any(isinstance(ex.target, tuple) for ex in examples):
            raise DataError(f"{path}: target alternatives (lists) need foil alternatives")
        return LOGPROB
    lists = {isinstance(ex.target, tuple) for ex in examples}
    if len(lists) > 1:
        raise DataError(f"{path}: some targets are lists and some are text; use one form in a file")
    return PROB_DIFF if lists == {True} else LOGIT_DIFF


def _show(choice: Choice) -> str:
    return repr(choice) if isinstance(choice, str) else "[" + ", ".join(map(repr, choice)) + "]"


def is_prompt_file(path: str | os.PathLike, target_column: str = "target") -> bool:
    """Whether a data file holds prompts (it has the target column) rather than labelled texts."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in FILE_EXTENSIONS:
        return False
    columns, _ = read_rows(path)
    return target_column in columns


# ---------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------
def load_prompts(
    name_or_path: str | os.PathLike,
    split: str = "dev",
    *,
    count: int | None = None,
    seed: int | None = None,
    prompt_column: str = "prompt",
    target_column: str = "target",
    foil_column: str | None = "foil",
) -> PromptSet:
    """A generated set by name (`ioi`, `greater-than`: `count` prompts, default 200, drawn with
    `seed`, default PROMPT_SEED, for `split`), or a prompt file (the first `count` rows)."""
    if count is not None and count < 1:
        raise DataError(f"the number of prompts must be >= 1, got {count}")
    key = str(name_or_path)
    if key in _GENERATORS:
        if split not in SPLITS:
            raise DataError(
                f"unknown split {split!r} for prompt set {key!r}; valid splits: {', '.join(SPLITS)}"
            )
        return _GENERATORS[key](count, seed=PROMPT_SEED if seed is None else seed, split=split)
    path = Path(key).expanduser()
    if not path.exists() and path.suffix.lower() not in FILE_EXTENSIONS and os.sep not in key:
        raise DataError(
            f"unknown prompt set {key!r}: not a generated set ({', '.join(PROMPT_SETS)}) and no such file"
        )
    prompts = load_prompt_file(
        path, split, prompt_column=prompt_column, target_column=target_column, foil_column=foil_column
    )
    return prompts[:count] if count is not None else prompts


# ---------------------------------------------------------------------------------------------
# Checking against a model's tokenizer
# ---------------------------------------------------------------------------------------------
def continuation_ids(tokenizer, prompt: str, text: str) -> list[int]:
    """The tokens `text` adds after `prompt`: those of prompt + text past the prompt's own tokens
    (so a target is cut into tokens as the model sees it in context), or, where the tokenizer
    merges across the boundary, the tokens of `text` alone. The same rule the objectives use
    (`attattr.core.encoding.continuation_ids`)."""
    return _continuation_ids(tokenizer, prompt, text)


def check_tokens(prompts: PromptSet, tokenizer) -> PromptSet:
    """Refuse, naming the row, a prompt or continuation that tokenises to nothing, a foil whose tokens
    equal the target's, and alternatives (lists) that are not one token each or that overlap."""
    for k, ex in enumerate(prompts):
        where = f"{prompts.name}: row {k + 1} (id {ex.id!r})"
        if not tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]:
            raise DataError(f"{where}: the prompt tokenises to nothing")
        ids: dict[str, list[list[int]]] = {}
        for what, choices in (("target", ex.targets), ("foil", ex.foils)):
            ids[what] = []
            for text in choices:
                tokens = continuation_ids(tokenizer, ex.prompt, text)
                if not tokens:
                    raise DataError(f"{where}: the {what} {text!r} tokenises to nothing")
                if isinstance(ex.target, tuple) and len(tokens) != 1:
                    raise DataError(
                        f"{where}: the {what} alternative {text!r} is {len(tokens)} tokens; alternatives "
                        "must be one token each"
                    )
                ids[what].append(tokens)
        if ex.foil is not None:
            if not isinstance(ex.target, tuple) and ids["target"] == ids["foil"]:
                raise DataError(f"{where}: the foil {ex.foil!r} tokenises like the target {ex.target!r}")
            shared = {tuple(t) for t in ids["target"]} & {tuple(f) for f in ids["foil"]}
            if shared:
                raise DataError(f"{where}: the target and the foil share the token(s) {sorted(shared)}")
    return prompts


def multi_token_names(tokenizer, names: Sequence[str] = IOI_NAMES) -> list[str]:
    """The names that `tokenizer` does not write as one token after a space."""
    return [n for n in names if len(tokenizer(" " + n, add_special_tokens=False)["input_ids"]) != 1]


def prompt_sets_summary() -> list[dict[str, Any]]:
    """One row per generated set: name, description, metric, default count, paper, seed."""
    return [
        {
            "name": info.name,
            "description": info.description,
            "metric": info.metric,
            "default_count": info.default_count,
            "paper": info.paper,
            "seed": PROMPT_SEED,
        }
        for info in PROMPT_SETS.values()
    ]
