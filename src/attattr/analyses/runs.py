"""The one dataset runner: examples -> a deterministic plan of shards -> shard functions -> a
resumable store -> records in dataset order, which each analysis merges into its result.

    job = Job("heads.importance", settings={...})          # settings: plain JSON, the store's header
    store = open_store(job, folder=out / "runs", name="importance-attattr")
    records = run(job, examples, model=model, tokenizer=tokenizer, store=store, batch_size=8)
    result = merge_importance(records, ...)                 # one merge function per analysis

* `as_examples` is the one place where texts, tuples, mappings and `attattr.data.Example`s become
  `RunExample`s (id, text, text_pair, label).
* `plan` cuts the examples into `Shard`s by length (the engine's `length_batches`); the plan depends
  only on the examples, the tokenizer and the batch size, so a resumed run recomputes a shard with
  exactly the batch it had before and its numbers do not move.
* A shard is plain and picklable and carries its texts: `run_shard(job, shard, model, tokenizer)`
  can run in another process or on another machine (an `Executor` decides where; `LocalExecutor`
  runs in this process). Shard functions are registered by kind with `register_shard_function`.
* `RunStore`: JSON Lines, a header line with the job's kind and settings, then one record per
  example. Each shard's records are appended in one write as soon as the shard returns; a line cut
  short by a kill is ignored; different settings are refused. Nothing is written before the first
  shard finishes, so a command that stops on a bad option leaves no file behind. Run files are
  named by a hash of their settings (`importance-attattr-<hash>.jsonl`), so runs with different
  settings share a folder; `fresh=True` starts over. A lock file keeps two processes from writing
  the same run at once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..core.encoding import model_max_length, token_count
from ..core.engine import length_batches
from ..core.errors import InputError, ResultFileError
from ..core.files import plain, write_text

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FORMAT = "attattr-run/1"
ON_ERROR = ("stop", "continue")

Record = dict[str, Any]
ProgressFn = Callable[[int], None]


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunExample:
    """One input of a dataset run. `label`: the gold class index, or None. A causal LM's prompt
    (`attattr.prompts.PromptExample`) keeps its `target` and `foil` (a text or alternatives)."""

    id: str
    text: str
    text_pair: str | None = None
    label: int | None = None
    target: Any = None
    foil: Any = None


def as_examples(
    examples: Iterable[Any], *, need_labels: bool = False, num_labels: int | None = None
) -> list[RunExample]:
    """`RunExample`s from texts, `(text, pair[, label])` tuples, mappings with a "text" key, or
    objects with `.text` (and optional `.id`, `.text_pair`, `.label`, e.g. `attattr.data.Example`).
    An example without an id gets its position. Ids must be unique; texts non-empty strings;
    labels integers (all of them present when `need_labels`; within 0..num_labels-1 when given)."""
    if examples is None:
        raise InputError("no examples given")
    out: list[RunExample] = []
    for i, x in enumerate(examples):
        target = getattr(x, "target", None) if not isinstance(x, str | tuple | Mapping) else None
        foil = getattr(x, "foil", None) if target is not None else None
        if isinstance(x, RunExample):
            eid, text, pair, label = x.id, x.text, x.text_pair, x.label
        elif hasattr(x, "prompt") and target is not None:  # attattr.prompts.PromptExample
            eid, text, pair, label = x.id, x.prompt, None, None
        elif isinstance(x, str):
            eid, text, pair, label = None, x, None, None
        elif isinstance(x, tuple):
            if not 1 <= len(x) <= 3:
                raise InputError(f"example {i}: a tuple must be (text[, pair[, label]]), got {len(x)} items")
            eid, text, pair, label = None, x[0], x[1] if len(x) > 1 else None, x[2] if len(x) > 2 else None
        elif isinstance(x, Mapping) and "text" in x:
            eid, text, pair, label = x.get("id"), x["text"], x.get("text_pair"), x.get("label")
        elif hasattr(x, "text"):
            eid, text = getattr(x, "id", None), x.text
            pair, label = getattr(x, "text_pair", None), getattr(x, "label", None)
        else:
            raise InputError(f"example {i}: expected an Example, a text or a tuple, got {type(x).__name__}")
        eid = str(i) if eid is None else str(eid)
        for what, value in (("text", text), ("pair text", pair)):
            if value is None and what == "pair text":
                continue
            if not isinstance(value, str):
                raise InputError(f"{what} of example {eid} is not a string ({type(value).__name__})")
            if not value.strip():
                raise InputError(f"{what} of example {eid} is empty")
        out.append(RunExample(eid, text, pair, _label(label, eid), target, foil))
    if not out:
        raise InputError("no examples given")
    seen: set[str] = set()
    for x in out:
        if x.id in seen:
            raise InputError(f"example ids must be unique; {x.id!r} appears more than once")
        seen.add(x.id)
    if need_labels:
        missing = [x.id for x in out if x.label is None]
        if missing:
            raise InputError(
                f"this analysis needs the gold label of every example; missing for {', '.join(missing[:3])}"
            )
    if num_labels is not None:
        bad = next((x for x in out if x.label is not None and not 0 <= x.label < num_labels), None)
        if bad is not None:
            raise InputError(
                f"gold label {bad.label} of example {bad.id} is out of range: the model has {num_labels} classes"
            )
    return out


def _label(value: Any, eid: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if hasattr(value, "item") and not isinstance(value, str):  # numpy / torch scalar
            return _label(value.item(), eid)
        raise InputError(f"label of example {eid} must be a class index, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Jobs and shards
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What to compute: `kind` names a registered shard function; `settings` (plain JSON values)
    determine the numbers and form the run file's header (a resumed run must have the same);
    `options` change only how the work runs (memory budget, prediction batch size), not the
    numbers, and are left out of the header."""

    kind: str
    settings: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind:
            raise InputError(f"a job needs a kind (a registered shard function), got {self.kind!r}")
        object.__setattr__(self, "settings", _plain_json(self.settings, "settings"))
        object.__setattr__(self, "options", _plain_json(self.options, "options"))

    def key(self) -> str:
        """A short hash of the kind and settings: names the run file."""
        text = json.dumps({"kind": self.kind, "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _plain_json(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A copy made of plain JSON values (tuples become lists, tensors lists, numpy scalars numbers)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"job {what} must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), default=plain))
    except TypeError as exc:
        raise InputError(f"job {what} must be plain values: {exc}") from None


@dataclass(frozen=True)
class Shard:
    """A batch of examples that one call of a shard function computes. Plain and picklable."""

    index: int
    examples: tuple[RunExample, ...]

    @property
    def ids(self) -> list[str]:
        return [x.id for x in self.examples]


def check_count(value: Any, name: str) -> int:
    """`value` if it is an integer >= 1 (not a bool), else InputError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def plan(
    examples: Sequence[RunExample],
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    *,
    max_length: int,
) -> list[Shard]:
    """Shards of at most `batch_size` examples of similar length (fewer where padding would waste
    work: `attattr.core.engine.length_batches`). Deterministic: the same examples, tokenizer and
    batch size give the same shards, numbered in order of length."""
    check_count(batch_size, "batch size")
    items = list(examples)
    lengths = [min(token_count(tokenizer, x.text, x.text_pair), max_length) for x in items]
    order = sorted(range(len(items)), key=lambda i: lengths[i])  # stable: ties keep dataset order
    batches = length_batches(order, lengths, batch_size)
    return [Shard(s, tuple(items[i] for i in batch)) for s, batch in enumerate(batches)]


# ---------------------------------------------------------------------------------------------
# Shard functions
# ---------------------------------------------------------------------------------------------
ShardFunction = Callable[[Any, Any, "tuple[RunExample, ...]", Job], list[Record]]
_SHARD_FUNCTIONS: dict[str, ShardFunction] = {}


def register_shard_function(kind: str) -> Callable[[ShardFunction], ShardFunction]:
    """Decorator: `fn(model, tokenizer, examples, job) -> [record per example, each with "id"]`
    computes the job `kind` on one shard. The module that defines a kind should be importable as
    `attattr.analyses.<kind>` or a package above it (e.g. "heads.importance"), so that a worker
    process that only received the job finds it."""

    def decorator(fn: ShardFunction) -> ShardFunction:
        if _SHARD_FUNCTIONS.get(kind, fn) is not fn:
            raise ValueError(f"shard function {kind!r} is registered twice")
        _SHARD_FUNCTIONS[kind] = fn
        return fn

    return decorator


def shard_function(kind: str) -> ShardFunction:
    """The function registered for `kind`, importing the analysis module that defines it if needed."""
    if kind not in _SHARD_FUNCTIONS:
        parts = kind.split(".")
        for stop in range(len(parts), 0, -1):
            name = f"{__package__}.{'.'.join(parts[:stop])}"
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name is not None and name.startswith(exc.name):
                    continue  # no such module: try the package above
                raise
            if kind in _SHARD_FUNCTIONS:
                break
    if kind not in _SHARD_FUNCTIONS:
        known = ", ".join(sorted(_SHARD_FUNCTIONS)) or "none"
        raise InputError(f"unknown job kind {kind!r} (registered: {known})")
    return _SHARD_FUNCTIONS[kind]


def run_shard(
    job: Job, shard: Shard, model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase
) -> list[Record]:
    """One shard's records, one per example in shard order, each with the example's "id"."""
    records = shard_function(job.kind)(model, tokenizer, shard.examples, job)
    ids = [r.get("id") if isinstance(r, dict) else None for r in records]
    if sorted(map(str, ids)) != sorted(shard.ids):
        raise RuntimeError(
            f"shard function {job.kind!r} returned records for {ids} instead of the shard's {shard.ids}"
        )
    return records


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------
class ShardError(Exception):
    """A shard failed; `cause` is the exception it raised. Executors raise this (not the bare
    exception) so that the runner knows which shard to leave out when it goes on."""

    def __init__(self, shard: Shard, cause: BaseException):
        super().__init__(f"shard {shard.index} ({', '.join(shard.ids[:3])}…) failed: {cause!r}")
        self.shard = shard
        self.cause = cause


class Executor(Protocol):
    def execute(
        self,
        job: Job,
        shards: Sequence[Shard],
        *,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        model_source: str | None,
    ) -> Iterator[tuple[Shard, list[Record]]]:
        """Run every shard; yield (shard, records) as each finishes, in any order. A failing shard
        raises `ShardError`. `model_source` (a recipe name or a model directory) lets a remote
        executor load the model once per worker."""
        ...


class LocalExecutor:
    """Runs the shards one after the other in this process, with the model given."""

    def execute(
        self,
        job: Job,
        shards: Sequence[Shard],
        *,
        model: PreTrainedModel | None,
        tokenizer: PreTrainedTokenizerBase,
        model_source: str | None = None,
    ) -> Iterator[tuple[Shard, list[Record]]]:
        for shard in shards:
            try:
                records = run_shard(job, shard, model, tokenizer)
            except Exception as exc:
                raise ShardError(shard, exc) from exc
            yield shard, records


# ---------------------------------------------------------------------------------------------
# Stores
# ---------------------------------------------------------------------------------------------
class MemoryStore:
    """The store's interface without a file (a run that is not resumable). Records go through
    JSON, so that the numbers are those a stored and reread run would give."""

    path: Path | None = None

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}

    def done(self, example_id: str) -> bool:
        return str(example_id) in self.records

    def pending(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if not self.done(i)]

    def ordered(self, ids: Iterable[str]) -> list[Record]:
        """Records in the order of `ids` (the dataset order), whatever order they finished in."""
        return [self.records[str(i)] for i in ids if str(i) in self.records]

    def append(self, record: Record) -> None:
        """Add one finished example (a dict with an "id")."""
        self.extend([record])

    def extend(self, records: Sequence[Record]) -> None:
        """Add finished examples: kept at once (a file store writes them in one append)."""
        lines = _lines(records)
        for line in lines:
            record = json.loads(line)
            self.records[str(record["id"])] = record

    def matches(self, job: Job) -> bool:
        return True

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Held while a run writes (a file store takes its lock)."""
        yield


def _lines(records: Sequence[Record]) -> list[str]:
    lines = []
    for record in records:
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError("a run record must be a dict with an 'id'")
        lines.append(json.dumps({**record, "id": str(record["id"])}, default=plain))
    return lines


class RunStore(MemoryStore):
    """A run file (JSON Lines): a header {"format", "kind", "settings"}, then one record per line.

    Opening reads what an earlier run finished and refuses other settings; nothing is written until
    the first records arrive (then the file, or with `fresh=True` a new file, is created at once)."""

    def __init__(self, path: str | os.PathLike, settings: Job | Mapping[str, Any], *, fresh: bool = False):
        super().__init__()
        self.path = Path(path)
        if isinstance(settings, Job):
            self.kind: str | None = settings.kind
            self.settings = settings.settings
        else:
            self.kind = None
            self.settings = _plain_json(settings, "settings")
        self.fresh = fresh
        self._exists = False  # the file holds our header (records are appended to it)
        self._good_end = 0  # bytes up to the last complete record
        self._size = 0
        self._newline = False  # the last complete record lacks its newline
        if self.path.is_dir():
            raise InputError(f"{self.path} is a folder, not a run file")
        self._load()

    def _header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"format": FORMAT}
        if self.kind is not None:
            header["kind"] = self.kind
        header["settings"] = self.settings
        return header

    def _load(self) -> None:
        self.records = {}
        self._exists = self._newline = False
        if self.fresh or not self.path.exists():
            return
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise ResultFileError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not raw:
            return
        lines = raw.split(b"\n")
        try:
            header = json.loads(lines[0])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ResultFileError(f"{self.path}: not an attattr run file (bad header)") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ResultFileError(f"{self.path}: not an attattr run file")
        theirs = header.get("settings") if isinstance(header.get("settings"), dict) else {}
        diff = sorted(k for k in set(theirs) | set(self.settings) if theirs.get(k) != self.settings.get(k))
        if self.kind is not None and header.get("kind") not in (None, self.kind):
            diff.insert(0, "kind")
        if diff:
            raise ResultFileError(
                f"{self.path} was written with other settings ({', '.join(diff)}); use another "
                "output folder, start over with --fresh, or delete the file"
            )
        good_end = len(lines[0]) + 1
        for number, line in enumerate(lines[1:], start=2):
            last = number == len(lines) or (number == len(lines) - 1 and lines[-1] == b"")
            if not line.strip():
                if number < len(lines):  # the piece after the final newline is no line
                    good_end += len(line) + 1
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "id" not in record:
                    raise ValueError("no id")
            except (ValueError, UnicodeDecodeError):
                if last:
                    break  # cut short by a kill: ignored, overwritten by the next append
                raise ResultFileError(
                    f"{self.path}: line {number} is corrupt; start over with --fresh or delete the file"
                ) from None
            self.records[str(record["id"])] = record
            good_end += len(line) + 1
        self._exists = True
        self._size = len(raw)
        self._good_end = min(good_end, len(raw))
        self._newline = good_end > len(raw)  # a complete last record without its newline

    def matches(self, job: Job) -> bool:
        return self.settings == job.settings and self.kind in (None, job.kind)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Take the run's lock file (another process writing the same run: InputError "busy") and
        re-read the file, which another run may have extended since it was opened."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise InputError(
                        f"{self.path.parent} is busy: another attattr run is writing {self.path.name}; "
                        "wait for it to finish or use another output folder"
                    ) from None
                raise
            self._load()
            yield
        finally:
            os.close(fd)  # releases the lock; the empty lock file stays (removing it would race)

    def extend(self, records: Sequence[Record]) -> None:
        """Write the records in one append (flushed and synced), then keep them."""
        if not records:
            return
        lines = _lines(records)
        data = (("\n" if self._newline else "") + "\n".join(lines) + "\n").encode("utf-8")
        if not self._exists:
            header = json.dumps(self._header()) + "\n"
            write_text(self.path, header)  # atomic: a fresh start replaces an old file only now
            self._exists, self.fresh = True, False
            self._good_end = self._size = len(header.encode("utf-8"))
        with open(self.path, "r+b") as f:
            if self._size != self._good_end:  # a line cut short by a kill: overwrite it
                f.truncate(self._good_end)
            f.seek(self._good_end)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._good_end = self._size = self._good_end + len(data)
        self._newline = False
        for line in lines:
            record = json.loads(line)
            self.records[str(record["id"])] = record


def check_output_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or where no file can be created
    (InputError). Creates nothing."""
    import tempfile

    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {folder} is a file, not a folder")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what} {folder}: {probe} is a file, so no folder can be made there")
    try:  # creating a file is the one sure test (permission bits say nothing for root or read-only mounts)
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise InputError(f"{what} {folder} is not writable ({probe}: {exc.strerror or exc})") from None
    return path


def run_file(folder: str | os.PathLike, name: str, job: Job) -> Path:
    """`folder/<name>-<hash of the job's settings>.jsonl`: runs with other settings get other files."""
    return Path(folder) / f"{name}-{job.key()}.jsonl"


def open_store(
    job: Job,
    *,
    folder: str | os.PathLike | None = None,
    name: str | None = None,
    path: str | os.PathLike | None = None,
    fresh: bool = False,
) -> MemoryStore:
    """The store of a job: a file named by its settings in `folder` (or the file `path`), or, with
    neither, memory (not resumable)."""
    if path is None and folder is not None:
        path = run_file(folder, name or job.kind.replace(".", "-"), job)
    if path is None:
        return MemoryStore()
    return RunStore(path, job, fresh=fresh)


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------
def run(
    job: Job,
    examples: Iterable[Any],
    *,
    model: PreTrainedModel | None,
    tokenizer: PreTrainedTokenizerBase,
    store: MemoryStore | None = None,
    executor: Executor | None = None,
    batch_size: int,
    progress: ProgressFn | None = None,
    on_error: str = "stop",
    model_source: str | None = None,
    max_length: int | None = None,
    need_labels: bool = False,
) -> list[Record]:
    """Run `job` over `examples`: skip the examples the store already holds, execute the shards that
    have pending examples, append each shard's records to the store as soon as it returns, and
    return every record in dataset order.

    progress(n): called with the number of examples finished (those found in the store first).
    on_error: "stop" raises the first shard's error; "continue" runs the other shards, keeps their
        records, then raises a RuntimeError naming the shards that failed.
    max_length: the longest input, for planning (default: the model's and tokenizer's limit)."""
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    items = as_examples(examples, need_labels=need_labels)
    shard_function(job.kind)  # an unknown kind fails before any work
    store = store if store is not None else MemoryStore()
    if not store.matches(job):
        raise InputError(f"the store {store.path} belongs to another job than {job.kind!r}")
    executor = executor if executor is not None else LocalExecutor()
    if max_length is None:
        max_length = model_max_length(model, tokenizer) if model is not None else _tokenizer_limit(tokenizer)
    shards = plan(items, tokenizer, batch_size, max_length=max_length)
    ids = [x.id for x in items]
    failed: list[ShardError] = []
    with store.session():
        pending = [s for s in shards if store.pending(s.ids)]
        finished = len(items) - sum(len(s.examples) for s in pending)
        if progress is not None and finished:
            progress(finished)
        while pending:
            try:
                for shard, records in executor.execute(
                    job, pending, model=model, tokenizer=tokenizer, model_source=model_source
                ):
                    store.extend([r for r in records if not store.done(r["id"])])
                    pending = [s for s in pending if s.index != shard.index]
                    if progress is not None:
                        progress(len(shard.examples))
            except ShardError as err:
                if on_error == "stop":
                    raise err.cause from None
                failed.append(err)
                pending = [s for s in pending if s.index != err.shard.index]
            else:
                break
    if failed:
        first = failed[0]
        raise RuntimeError(
            f"{len(failed)} of {len(shards)} shards failed (first: shard {first.shard.index}, "
            f"{type(first.cause).__name__}: {first.cause}); the other records are kept in the run file"
        )
    missing = store.pending(ids)
    if missing:
        raise RuntimeError(f"the executor returned no records for {len(missing)} examples ({missing[0]}, …)")
    return store.ordered(ids)


def _tokenizer_limit(tokenizer) -> int:
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 100_000 else 512
