"""The dataset runner: example coercion, the plan, shard functions, executors and the run store.

The shard function here needs no model: it records each text's token count and a value that
depends on its whole shard (as batched numbers can), so that a resumed run is checked to recompute
exactly the shards it had before."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import pytest

from attattr.analyses import runs
from attattr.analyses.runs import (
    Job,
    MemoryStore,
    RunExample,
    RunStore,
    Shard,
    as_examples,
    open_store,
    plan,
    register_shard_function,
    run,
    run_shard,
)
from attattr.core.errors import InputError, ResultFileError
from tests.tiny import tiny_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "good film very good",
    "not a bad film",
    "the dog sat down again and again",
    "it is bad",
    "the film is not good and the cat is very bad",
    "fun",
    "this plot was dull but the acting was great",
]
CALLS: list[list[str]] = []  # ids of every shard the test function computed


@register_shard_function("test.count")
def _count(model, tokenizer, examples, job):
    CALLS.append([x.id for x in examples])
    if job.settings.get("fail_on") in [x.id for x in examples]:
        raise ValueError(f"cannot do {job.settings['fail_on']}")
    lengths = [len(tokenizer(x.text)["input_ids"]) for x in examples]
    return [
        {"id": x.id, "tokens": n, "shard_total": sum(lengths), "scale": job.settings.get("scale", 1) * n}
        for x, n in zip(examples, lengths, strict=True)
    ]


@pytest.fixture(autouse=True)
def clear_calls():
    CALLS.clear()


@dataclass
class Ex:
    id: str
    text: str
    text_pair: str | None = None
    label: int | None = None


def _job(**settings) -> Job:
    return Job("test.count", {"scale": 2, **settings})


def _records(path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines[1:]]


class Stop(Exception):
    pass


def _stop_after(calls: int):
    seen = []

    def progress(n):
        seen.append(n)
        if len(seen) == calls:
            raise Stop

    return progress


# ---------------------------------------------------------------------------------------------
# examples, jobs, plan
# ---------------------------------------------------------------------------------------------
def test_as_examples_coerces_every_form_in_one_place():
    items = as_examples(
        [
            "plain text",
            ("a premise", "a hypothesis", 1),
            {"id": "m", "text": "from a mapping", "label": 0},
            Ex("x7", "an object", None, 1),
            RunExample("r", "already one"),
        ]
    )
    assert items == [
        RunExample("0", "plain text"),
        RunExample("1", "a premise", "a hypothesis", 1),
        RunExample("m", "from a mapping", None, 0),
        RunExample("x7", "an object", None, 1),
        RunExample("r", "already one"),
    ]
    for bad, message in (
        ([], "no examples"),
        ([Ex("a", "one"), Ex("a", "two")], "unique; 'a'"),
        ([Ex("a", "  ")], "text of example a is empty"),
        ([Ex("a", b"bytes")], "not a string"),
        ([Ex("a", "ok", "")], "pair text of example a is empty"),
        ([Ex("a", "ok", None, "positive")], "class index"),
        ([3.5], "expected an Example"),
    ):
        with pytest.raises(InputError, match=message):
            as_examples(bad)
    with pytest.raises(InputError, match="needs the gold label of every example; missing for b"):
        as_examples([Ex("a", "x", None, 0), Ex("b", "y")], need_labels=True)


def test_plan_is_deterministic_by_length_and_covers_every_example_once():
    tok = tiny_tokenizer()
    items = as_examples(TEXTS)
    shards = plan(items, tok, 3, max_length=64)
    assert shards == plan(as_examples(TEXTS), tok, 3, max_length=64)
    assert [s.index for s in shards] == list(range(len(shards)))
    assert sorted(i for s in shards for i in s.ids) == sorted(x.id for x in items)
    assert all(1 <= len(s.examples) <= 3 for s in shards)
    lengths = [[len(tok(x.text)["input_ids"]) for x in s.examples] for s in shards]
    flat = [n for shard in lengths for n in shard]
    assert flat == sorted(flat)  # shards run short to long
    # plain and picklable: another process gets the texts with the shard
    assert pickle.loads(pickle.dumps(shards[1])) == shards[1]
    assert pickle.loads(pickle.dumps(_job())) == _job()
    with pytest.raises(InputError, match="batch size"):
        plan(items, tok, 0, max_length=64)


def test_job_settings_are_plain_json_and_name_the_run_file(tmp_path):
    job = Job("test.count", {"ks": (0, 1), "scale": 2})
    assert job.settings == {"ks": [0, 1], "scale": 2}
    assert job.key() == Job("test.count", {"scale": 2, "ks": [0, 1]}).key()  # key order is irrelevant
    assert job.key() != Job("test.count", {"scale": 3, "ks": [0, 1]}).key()
    assert job.key() != Job("test.other", {"scale": 2, "ks": [0, 1]}).key()
    assert runs.run_file(tmp_path, "count", job).name == f"count-{job.key()}.jsonl"
    with pytest.raises(InputError, match="plain values"):
        Job("test.count", {"x": object()})


def test_run_shard_looks_the_function_up_by_kind():
    tok = tiny_tokenizer()
    shard = Shard(0, tuple(as_examples(TEXTS[:2])))
    records = run_shard(_job(), shard, None, tok)
    assert [r["id"] for r in records] == ["0", "1"] and records[0]["scale"] == 2 * records[0]["tokens"]
    with pytest.raises(InputError, match="unknown job kind 'test.bogus'"):
        run_shard(Job("test.bogus", {}), shard, None, tok)


# ---------------------------------------------------------------------------------------------
# runs and the store
# ---------------------------------------------------------------------------------------------
def test_run_returns_records_in_dataset_order_and_memory_matches_a_file(tmp_path):
    tok = tiny_tokenizer()
    exs = [Ex(f"e{i}", t) for i, t in enumerate(TEXTS)]
    in_memory = run(_job(), exs, model=None, tokenizer=tok, batch_size=3)
    assert [r["id"] for r in in_memory] == [x.id for x in exs]
    assert [r["tokens"] for r in in_memory] == [len(tok(t)["input_ids"]) for t in TEXTS]
    stored = run(
        _job(), exs, model=None, tokenizer=tok, batch_size=3, store=RunStore(tmp_path / "r.jsonl", _job())
    )
    assert stored == in_memory
    header = json.loads((tmp_path / "r.jsonl").read_text().splitlines()[0])
    assert header == {"format": runs.FORMAT, "kind": "test.count", "settings": {"scale": 2}}


def test_resume_after_a_partial_store_gives_identical_records(tmp_path):
    tok = tiny_tokenizer()
    exs = [Ex(f"e{i}", t) for i, t in enumerate(TEXTS)]
    path = tmp_path / "run.jsonl"
    with pytest.raises(Stop):
        run(_job(), exs, model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()),
            progress=_stop_after(2))  # fmt: skip
    first_two = [i for shard in CALLS for i in shard]
    assert [r["id"] for r in _records(path)] == first_two and len(first_two) == 4
    with open(path, "a") as f:  # a kill in the middle of the next append
        f.write('{"id": "e8", "tokens": 3, "shard_')
    CALLS.clear()
    seen = []
    resumed = run(_job(), exs, model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()),
                  progress=seen.append)  # fmt: skip
    assert seen[0] == 4  # the examples found in the file count as done at once
    recomputed = [i for shard in CALLS for i in shard]
    assert sorted(recomputed) == sorted(x.id for x in exs if x.id not in first_two)
    CALLS.clear()
    fresh = run(_job(), exs, model=None, tokenizer=tok, batch_size=2)
    assert resumed == fresh  # the same shards, so the same shard-dependent numbers
    assert [r["id"] for r in _records(path)] == first_two + recomputed
    assert all(line.endswith("}") for line in path.read_text().splitlines())  # the cut line is gone
    CALLS.clear()
    again = run(_job(), exs, model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()))
    assert CALLS == [] and again == fresh


def test_a_cut_short_last_line_is_ignored_and_a_corrupt_middle_line_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    store = RunStore(path, {"a": 1})
    store.extend([{"id": "x", "v": 1}, {"id": "y", "v": 2}])
    with open(path, "a") as f:
        f.write('{"id": "z", "v"')
    back = RunStore(path, {"a": 1})
    assert sorted(back.records) == ["x", "y"] and not back.done("z")
    back.append({"id": "z", "v": 3})
    assert [r["id"] for r in _records(path)] == ["x", "y", "z"]
    # a complete last record without its newline is kept, and the next append starts a new line
    path.write_text(path.read_text().rstrip("\n"))
    again = RunStore(path, {"a": 1})
    assert again.done("z")
    again.append({"id": "w", "v": 4})
    assert [r["id"] for r in _records(path)] == ["x", "y", "z", "w"]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], "{garbage", lines[2]]) + "\n")
    with pytest.raises(ResultFileError, match="line 3 is corrupt"):
        RunStore(path, {"a": 1})
    path.write_text("not json\n")
    with pytest.raises(ResultFileError, match="not an attattr run file"):
        RunStore(path, {"a": 1})


def test_changed_settings_are_refused_by_message(tmp_path):
    path = tmp_path / "run.jsonl"
    tok = tiny_tokenizer()
    run(_job(), TEXTS[:3], model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()))
    with pytest.raises(ResultFileError, match=r"written with other settings \(scale\).*--fresh"):
        RunStore(path, _job(scale=5))
    with pytest.raises(ResultFileError, match=r"other settings \(kind\)"):
        RunStore(path, Job("test.other", {"scale": 2}))
    with pytest.raises(InputError, match="another job"):
        run(_job(scale=5), TEXTS[:3], model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()))
    # --fresh: the old file stays until the new run's first records replace it
    fresh = RunStore(path, _job(scale=5), fresh=True)
    assert fresh.records == {} and json.loads(path.read_text().splitlines()[0])["settings"]["scale"] == 2
    run(_job(scale=5), TEXTS[:3], model=None, tokenizer=tok, batch_size=2, store=fresh)
    assert json.loads(path.read_text().splitlines()[0])["settings"]["scale"] == 5
    assert len(_records(path)) == 3


class ReversedExecutor:
    """Finishes the shards last first, and checks that each one is in the file before the next."""

    def __init__(self, path):
        self.path = path
        self.seen_in_file: list[int] = []

    def execute(self, job, shards, *, model, tokenizer, model_source):
        for shard in reversed(shards):
            if self.seen_in_file or shard is not shards[-1]:
                self.seen_in_file.append(len(_records(self.path)))
            yield shard, run_shard(job, shard, model, tokenizer)


def test_records_are_appended_per_shard_as_they_finish_in_any_order(tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "run.jsonl"
    executor = ReversedExecutor(path)
    records = run(_job(), TEXTS, model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job()),
                  executor=executor)  # fmt: skip
    sizes = [len(s) for s in reversed(CALLS)]
    # before the k-th shard runs, the k - 1 finished ones are in the file
    assert executor.seen_in_file == [sum(sizes[-1 - j :]) for j in range(len(CALLS) - 1)]  # noqa: E203
    assert [r["id"] for r in records] == [str(i) for i in range(len(TEXTS))]  # dataset order
    assert [r["id"] for r in _records(path)] == [i for shard in CALLS for i in shard]  # finishing order


def test_settings_named_files_coexist_in_one_folder(tmp_path):
    tok = tiny_tokenizer()
    folder = tmp_path / "runs"
    for scale in (2, 3):
        job = _job(scale=scale)
        run(
            job,
            TEXTS[:4],
            model=None,
            tokenizer=tok,
            batch_size=2,
            store=open_store(job, folder=folder, name="count"),
        )
    files = sorted(p.name for p in folder.glob("*.jsonl"))
    assert files == sorted(f"count-{_job(scale=s).key()}.jsonl" for s in (2, 3))
    CALLS.clear()
    again = run(_job(scale=3), TEXTS[:4], model=None, tokenizer=tok, batch_size=2,
                store=open_store(_job(scale=3), folder=folder, name="count"))  # fmt: skip
    assert CALLS == [] and again[0]["scale"] == 3 * again[0]["tokens"]
    assert isinstance(open_store(_job()), MemoryStore)


def test_nothing_is_written_when_validation_fails(tmp_path):
    tok = tiny_tokenizer()
    folder = tmp_path / "runs"
    for kwargs, message in (
        (dict(batch_size=0), "batch size"),
        (dict(batch_size=2, on_error="ignore"), "on_error"),
        (dict(batch_size=2, examples=[Ex("a", "")]), "empty"),
        (dict(batch_size=2, examples=[]), "no examples"),
        (dict(batch_size=2, job=Job("test.bogus", {})), "unknown job kind"),
    ):
        job = kwargs.pop("job", _job())
        examples = kwargs.pop("examples", TEXTS)
        with pytest.raises(InputError, match=message):
            run(job, examples, model=None, tokenizer=tok, store=open_store(job, folder=folder), **kwargs)
    assert not folder.exists() and CALLS == []


def test_two_runs_of_one_file_at_once_are_refused(tmp_path):
    path = tmp_path / "run.jsonl"
    first = RunStore(path, _job())
    with first.session():
        with pytest.raises(InputError, match="is busy: another attattr run is writing run.jsonl"):
            run(_job(), TEXTS[:2], model=None, tokenizer=tiny_tokenizer(), batch_size=2,
                store=RunStore(path, _job()))  # fmt: skip
    assert CALLS == []
    run(_job(), TEXTS[:2], model=None, tokenizer=tiny_tokenizer(), batch_size=2, store=RunStore(path, _job()))
    assert len(_records(path)) == 2


def test_a_failing_shard_stops_or_lets_the_others_finish(tmp_path):
    tok = tiny_tokenizer()
    exs = [Ex(f"e{i}", t) for i, t in enumerate(TEXTS)]
    path = tmp_path / "run.jsonl"
    with pytest.raises(ValueError, match="cannot do e1"):
        run(
            _job(fail_on="e1"),
            exs,
            model=None,
            tokenizer=tok,
            batch_size=2,
            store=RunStore(path, _job(fail_on="e1")),
        )
    stopped = len(_records(path)) if path.exists() else 0
    CALLS.clear()
    with pytest.raises(RuntimeError, match="1 of 5 shards failed"):
        run(_job(fail_on="e1"), exs, model=None, tokenizer=tok, batch_size=2, store=RunStore(path, _job(fail_on="e1")),
            on_error="continue")  # fmt: skip
    records = _records(path)
    assert len(records) == len(TEXTS) - len(next(s for s in CALLS if "e1" in s)) > stopped
    assert "e1" not in {r["id"] for r in records}


@pytest.mark.cli  # a real process
def test_a_fresh_process_finds_the_analyses_shard_functions_by_kind():
    """A worker that only received a job imports the analysis that registered its kind."""
    import subprocess
    import sys

    code = (
        "from attattr.analyses import runs\n"
        "for kind in ('heads.importance', 'heads.effectiveness', 'tree.stats'):\n"
        "    print(kind, runs.shard_function(kind).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:3] == [
        "heads.importance attattr.analyses.heads.importance",
        "heads.effectiveness attattr.analyses.heads.effectiveness",
        "tree.stats attattr.analyses.tree.stats",
    ]


def test_output_folder_checked_before_any_work(tmp_path):
    assert runs.check_output_folder(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        runs.check_output_folder(blocker)
    with pytest.raises(InputError, match="is a file, so no folder can be made there"):
        runs.check_output_folder(blocker / "below")
