"""kill -9 and resume for every resumable command, two identical runs at once, and Ctrl-C.

Each case starts the real command (`attattr.cli.main`, the console script's entry point) in a
child process on a tiny saved model and a small CSV, waits until its run file holds some records,
kills it with SIGKILL (no cleanup of any kind), runs the same command again, and checks that

* the results equal those of an uninterrupted run into another folder (timings aside),
* every run file holds each record once, the same records as the uninterrupted run's, and
* nothing but the run files was left by the killed process.

The children are forked from a fork server that imports torch, transformers and attattr once, so
each starts without the seconds those imports take; one case runs the installed `attattr`
executable instead, a process started from scratch. A forked child pauses after each append to
its run file, so that the kill lands mid-run whatever the machine's speed; the numbers are not
touched.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.context
import multiprocessing.process
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from attattr.cli import INTERRUPTED

PAUSE = 0.1  # seconds the forked child waits after each append to a run file
DEADLINE = 120  # seconds a child may take to reach its first records (a loaded machine)
WORDS = "the cat dog sat ran on mat with film movie good bad very not fun dull plot acting".split()


def _texts(n: int) -> list[str]:
    """`n` distinct sentences of 4 to 9 tiny-vocabulary words (several shards of similar length)."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 6)) for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny classifier saved as a model directory, and a labelled CSV of 24 sentences."""
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    root = tmp_path_factory.mktemp("kill-resume")
    model = build_tiny_model("bert", layers=3, heads=4, seed=5)
    model.config.id2label = {0: "negative", 1: "positive"}
    model.config.label2id = {"negative": 0, "positive": 1}
    model.save_pretrained(root / "model")
    build_tiny_tokenizer().save_pretrained(root / "model")
    csv = root / "data.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(_texts(24))))
    return root / "model", csv


# ---------------------------------------------------------------------------------------------
# The commands: (arguments given --model, --data and the output, the run files to wait for, the
# result files to compare)
# ---------------------------------------------------------------------------------------------
Case = tuple[Callable[[Path, Path, Path], list[Any]], str, list[str]]
ATTR = ["--steps", 2, "--batch-size", 2]
CASES: dict[str, Case] = {
    "heads importance": (
        lambda m, d, o: ["heads", "importance", "--model", m, "--data", d, "--examples", 24, "--first", *ATTR,
                         "--out", o],
        "runs/importance-attattr-*.jsonl",
        ["importance-attattr.json"],
    ),
    "heads effectiveness": (
        lambda m, d, o: ["heads", "effectiveness", "--model", m, "--data", d, "--examples", 24, "--first",
                         "--step", 4, *ATTR, "--out", o],
        "runs/effectiveness-*.jsonl",
        ["effectiveness.json"],
    ),
    "heads prune": (
        lambda m, d, o: ["heads", "prune", "--model", m, "--data", d, "--examples", 8, "--first",
                         "--eval-limit", 24, "--methods", "attention,random", "--seeds", 2, *ATTR, "--out", o],
        "runs/prune-eval-*.jsonl",  # killed among the pruned evaluations, after the importance runs
        ["prune.json", "importance-attention.json"],
    ),
    "tree stats": (
        lambda m, d, o: ["tree", "stats", "--model", m, "--data", d, "--examples", 24, "--ks", "0,1,3",
                         "--seeds", 1, "--methods", "attribution,random", *ATTR, "--out", o],
        "runs/tree-stats-*.jsonl",
        ["tree_stats.json"],
    ),
    "triggers mine": (
        lambda m, d, o: ["triggers", "mine", "--model", m, "--data", d, "--examples", 24, "--order", "first",
                         "--min-tokens", 0, *ATTR, "--out", o / "patterns.jsonl"],
        "runs/triggers-mine-*.jsonl",
        ["patterns.jsonl"],
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _child(args: list[str], log: str, pause: float, env: dict[str, str]) -> None:
    """The child process: `attattr ARGS` with its output in `log`; never returns."""
    code = 1
    try:
        os.environ.clear()
        os.environ.update(env)  # the test's (its ATTATTR_HOME), not the fork server's
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if pause:
            from attattr.analyses import runs

            extend = runs.RunStore.extend

            def slow_extend(self, records):
                extend(self, records)
                time.sleep(pause)

            runs.RunStore.extend = slow_extend
        from attattr.cli import main

        sys.argv = ["attattr", *args]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _context() -> multiprocessing.context.BaseContext:
    """Children come from a fork server that imported attattr once: each starts at once, and none
    inherits the test process's threads."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["torch", "transformers", "attattr.cli", __name__])
    return _CONTEXT


_CONTEXT: multiprocessing.context.BaseContext | None = None


def _start(args: list[Any], log: Path, pause: float = PAUSE) -> multiprocessing.process.BaseProcess:
    """`attattr ARGS` running in a child process (output to `log`)."""
    proc = _context().Process(target=_child, args=([str(a) for a in args], str(log), pause, dict(os.environ)))
    proc.start()
    return proc


def _records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a run file (a last line cut short by the kill left out)."""
    out = []
    for line in path.read_text().splitlines()[1:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait_for_records(proc, folder: Path, pattern: str, at_least: int) -> int:
    """Poll the run file until it holds `at_least` records; the count then (the child still runs)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        count = len(_records(found[0])) if found else 0
        if count >= at_least:
            return count
        assert proc.is_alive(), f"the command ended (exit {proc.exitcode}) before it could be interrupted"
        time.sleep(0.005)
    raise AssertionError(f"no {at_least} records in {folder / pattern} after {DEADLINE} s")


def _stop(proc, sig: int = signal.SIGKILL) -> int | None:
    """Send `sig` (a no-op for a process that has ended), wait; the exit code (-N: killed by N)."""
    if proc.is_alive():
        os.kill(proc.pid, sig)
    proc.join(DEADLINE)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return proc.exitcode


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _result(path: Path) -> Any:
    if path.suffix == ".jsonl":
        return [_without_timings(json.loads(line)) for line in path.read_text().splitlines()]
    return _without_timings(json.loads(path.read_text()))


def _check_run_files(resumed: Path, whole: Path) -> None:
    """Each run file of the resumed folder holds every record once, the uninterrupted run's."""
    names = sorted(p.name for p in (whole / "runs").glob("*.jsonl"))
    assert names and sorted(p.name for p in (resumed / "runs").glob("*.jsonl")) == names
    for name in names:
        text = (resumed / "runs" / name).read_text()
        assert text.endswith("\n")
        records = [json.loads(line) for line in text.splitlines()[1:]]  # every line complete
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), f"{name}: a record is stored twice"
        expected = {r["id"]: r for r in _records(whole / "runs" / name)}
        assert {r["id"]: r for r in records} == expected, name


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(CASES))
def test_killed_run_resumes_to_the_uninterrupted_result(command, files, tmp_path, run_cli):
    model, data = files
    build, pattern, results = CASES[command]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = _start([*build(model, data, killed), "--json"], tmp_path / "child.log")
    try:
        records = _wait_for_records(proc, killed, pattern, at_least=2)
    finally:
        code = _stop(proc)
    assert code == -signal.SIGKILL
    [run_file] = killed.glob(pattern)
    stored = len(_records(run_file))
    assert stored >= records >= 2
    assert not any((killed / name).exists() for name in results)  # killed before its results
    left = {p.relative_to(killed).parts[0] for p in killed.rglob("*") if p.is_file()}
    assert left <= {"runs"}, left

    code, _, err = run_cli(*build(model, data, killed), "--json")  # the same command again
    assert code == 0, err
    code, _, err = run_cli(*build(model, data, whole), "--json")
    assert code == 0, err
    for name in results:
        assert _result(killed / name) == _result(whole / name), name
    _check_run_files(killed, whole)
    assert stored < len(_records(whole / run_file.relative_to(killed)))  # it was killed mid-run


def test_killed_installed_command_resumes(files, tmp_path, run_cli):
    """The same for a process started from scratch: the `attattr` executable of this environment,
    without any pause, killed once its run file holds records."""
    model, data = files
    build, pattern, results = CASES["triggers mine"]
    exe = Path(sys.executable).with_name("attattr")
    if not exe.is_file():
        pytest.skip(f"no attattr executable next to {sys.executable}")
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(_texts(60))))
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    args = [*build(model, big, killed), "--examples", 60, "--json"]
    proc = subprocess.Popen(
        [str(exe), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    records = 0
    deadline = time.monotonic() + DEADLINE
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = sorted(killed.glob(pattern))
            records = len(_records(found[0])) if found else 0
            if records >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and 2 <= records < 60, (proc.returncode, records)
    assert not (killed / "patterns.jsonl").exists()
    code, _, err = run_cli(*build(model, big, killed), "--examples", 60, "--json")
    assert code == 0, err
    code, _, err = run_cli(*build(model, big, whole), "--examples", 60, "--json")
    assert code == 0, err
    assert _result(killed / "patterns.jsonl") == _result(whole / "patterns.jsonl")
    _check_run_files(killed, whole)


@pytest.mark.parametrize("command", ["heads importance", "tree stats", "triggers mine"])
def test_second_identical_run_into_a_busy_folder_exits_2(command, files, tmp_path, run_cli):
    model, data = files
    build, pattern, _ = CASES[command]
    out = tmp_path / "out"
    proc = _start([*build(model, data, out), "--json"], tmp_path / "child.log", pause=0.5)
    try:
        _wait_for_records(proc, out, pattern, at_least=1)
        code, _, err = run_cli(*build(model, data, out), "--json")
        still_running = proc.is_alive()
    finally:
        _stop(proc)
    assert still_running
    [run_file] = out.glob(pattern)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert " ".join(lines[0].split()) == (
        f"error: {run_file.parent} is busy: another attattr run is writing {run_file.name}; "
        "wait for it to finish or use another output folder"
    )
    ids = [r["id"] for r in _records(run_file)]
    assert len(ids) == len(set(ids))  # the refused run added nothing


def test_ctrl_c_says_what_is_kept_and_the_run_resumes(files, tmp_path, run_cli):
    model, data = files
    build, pattern, results = CASES["heads importance"]
    out = tmp_path / "out"
    log = tmp_path / "child.log"
    proc = _start([*build(model, data, out), "--json"], log)
    try:
        _wait_for_records(proc, out, pattern, at_least=2)
    finally:
        code = _stop(proc, signal.SIGINT)
    assert code == 130
    assert log.read_text().strip().splitlines()[-1] == INTERRUPTED
    [run_file] = out.glob(pattern)
    kept = _records(run_file)
    assert len(kept) >= 2 and not (out / results[0]).exists()
    code, _, err = run_cli(*build(model, data, out), "--json")
    assert code == 0, err
    resumed = {r["id"]: r for r in _records(run_file)}
    assert len(resumed) == 24 and all(resumed[r["id"]] == r for r in kept)


def _replace_and_die(home: str) -> None:
    """A `train --force` replacing a built model, killed by SIGKILL between its two renames."""
    from attattr import models
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    final = Path(home) / "models" / "minilm-rt"
    model, tok = build_tiny_model("bert", layers=1, heads=2), build_tiny_tokenizer()
    rename = os.rename

    def rename_then_die(src, dst):
        rename(src, dst)
        if Path(dst).name.startswith(".old-"):  # the old model is aside, the new one not yet in
            os.kill(os.getpid(), signal.SIGKILL)

    models.os.rename = rename_then_die
    models.save_built(
        model,
        tok,
        {"recipe": "minilm-rt", "dev_accuracy": 0.9},
        final,
        force=True,
        started=0,
        seconds_key="total_seconds",
    )


def test_training_replacement_killed_between_renames_is_restored(attattr_home):
    from attattr import models
    from tests.conftest import build_tiny_model, build_tiny_tokenizer

    final = attattr_home / "models" / "minilm-rt"
    model, tok = build_tiny_model("bert", layers=1, heads=2), build_tiny_tokenizer()
    models.save_built(
        model,
        tok,
        {"recipe": "minilm-rt", "dev_accuracy": 0.7},
        final,
        force=True,
        started=0,
        seconds_key="total_seconds",
    )
    proc = _context().Process(target=_replace_and_die, args=(str(attattr_home),))
    proc.start()
    proc.join(DEADLINE)
    assert proc.exitcode == -signal.SIGKILL
    [aside] = final.parent.glob(".old-minilm-rt-*")
    assert not final.exists() and not models.is_built("minilm-rt")
    loaded = models.load("minilm-rt", build=False, quiet=True)  # the next load puts the old model back
    assert loaded.manifest["dev_accuracy"] == 0.7 and not aside.exists()
    assert [p.name for p in final.parent.iterdir() if p.name.startswith((".old", ".tmp"))] == []
