"""The Ray options of the dataset commands, through the real entry point: `attattr heads importance
--ray ADDRESS` on the test cluster gives the numbers of the run without it; bad input ends in one
line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ray import kinds
from tests.ray.conftest import ROOT, free_port

pytest.importorskip("ray", reason="the Ray tests need the extra: pip install 'attattr[ray]'")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "reviews.csv"
    rows = ["text,label"] + [f"{t},{i % 2}" for i, t in enumerate(kinds.texts(12))]
    path.write_text("\n".join(rows) + "\n")
    return path


def _args(model_dir, data_file, out):
    return [
        *("heads", "importance", "--model", model_dir, "--data", data_file, "--examples", 12),
        *("--first", "--steps", 2, "--batch-size", 3, "--out", out, "--json"),
    ]


def test_heads_importance_on_the_cluster_equals_the_plain_run(
    ray_cluster, tiny_model_dir, data_file, tmp_path, run_cli
):
    code, out, err = run_cli(*_args(tiny_model_dir, data_file, tmp_path / "plain"))
    assert code == 0, err
    plain = json.loads(out)
    attattr = Path(sys.executable).with_name("attattr")
    command = [attattr, *_args(tiny_model_dir, data_file, tmp_path / "ray")]
    command += ["--ray", ray_cluster.address, "--workers", 2]
    done = subprocess.run(
        [str(c) for c in command], cwd=ROOT, env=ray_cluster.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    on_ray = json.loads(done.stdout)
    assert on_ray["scores"] == plain["scores"]
    assert on_ray["example_ids"] == plain["example_ids"]


def test_unreachable_address_one_line_exit_2(tiny_model_dir, data_file, tmp_path, run_cli):
    port = free_port()
    started = time.monotonic()
    code, out, err = run_cli(
        *_args(tiny_model_dir, data_file, tmp_path / "out"), "--ray", f"127.0.0.1:{port}"
    )
    assert code == 2
    assert err.strip() == f"error: no Ray cluster at 127.0.0.1:{port}: connection refused"
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out" / "importance-attattr.json").exists()


def test_ray_not_installed_one_line_exit_2(tiny_model_dir, data_file, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = run_cli(*_args(tiny_model_dir, data_file, tmp_path / "out"), "--ray", "local")
    assert code == 2
    assert err.strip() == "error: --ray needs Ray, which is not installed: pip install 'attattr[ray]'"


def test_ray_options_without_ray_exit_2(tiny_model_dir, data_file, tmp_path, run_cli):
    code, out, err = run_cli(*_args(tiny_model_dir, data_file, tmp_path / "out"), "--workers", 4)
    assert code == 2
    assert "--workers only apply with --ray" in err and len(err.strip().splitlines()) == 1
