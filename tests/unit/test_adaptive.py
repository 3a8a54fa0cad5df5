"""Error-controlled integration (steps="auto", the default): the recorded estimate against the true
error, refinement only where the integrand is rough, unconverged layers flagged, bf16 only where it
keeps the error, presets, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import attattr
import attattr.core.engine as engine
from attattr import Attribution
from attattr.core.errors import InputError, ResultFileError
from attattr.core.planning import plan_passes, plan_rows
from attattr.core.quadrature import (
    DEFAULT_TOL,
    PRESETS,
    adaptive_levels,
    gauss_kronrod,
    preset_options,
)

from ..tiny import tiny_model, tiny_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "this film was very good, but the plot was dull",
    ("a dog ran", "the cat sat down again"),
]


def relative_errors(attr: Attribution, reference: Attribution) -> list[float]:
    """Per layer, ||S - S_ref||_F / ||S_ref||_F."""
    return [
        float(
            (attr.scores[i].double() - reference.scores[i].double()).norm()
            / reference.scores[i].double().norm()
        )
        for i in range(len(attr.layers))
    ]


def attribute(model, text, **options) -> Attribution:
    args = text if isinstance(text, tuple) else (text,)
    return attattr.attribute(model, tiny_tokenizer(), *args, **options)


def rough_layer_model():
    """A tiny BERT whose layer 0 changes F roughly along alpha: layer 0's values and output are scaled
    up (its attention dominates the residual stream) and layer 1's queries and keys too (its
    softmax reacts sharply to that). Layers 1 and 2 reach F without passing layer 1's sharp
    softmax with a scaled input, so their integrands stay smooth."""
    model = tiny_model("bert", init=0.02, seed=1)
    with torch.no_grad():
        first = model.bert.encoder.layer[0].attention
        first.self.value.weight.mul_(30)
        first.output.dense.weight.mul_(30)
        second = model.bert.encoder.layer[1].attention.self
        second.query.weight.mul_(30)
        second.key.weight.mul_(30)
    return model


# ---- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_gauss_kronrod_is_exact_to_degree_3n_plus_1_and_nests_gauss(n):
    nodes, kronrod, gauss = gauss_kronrod(n)
    for degree in range(3 * n + 2):
        exact = 2.0 / (degree + 1) if degree % 2 == 0 else 0.0
        assert (kronrod * nodes**degree).sum() == pytest.approx(exact, abs=1e-13)
    g, w = np.polynomial.legendre.leggauss(n)
    assert np.array_equal(nodes[gauss != 0], g) and np.allclose(gauss[gauss != 0], w)
    assert (kronrod > 0).all()
    if n == 7:  # the tabulated G7-K15 pair (QUADPACK)
        assert nodes[-1] == pytest.approx(0.991455371120813, abs=1e-14)
        assert kronrod[-1] == pytest.approx(0.022935322010529, abs=1e-14)


def test_levels_reuse_the_nodes_below():
    level0, level1 = adaptive_levels()
    assert np.array_equal(level1.nodes[:3], level0.nodes) and level1.new == 4
    nodes, weights, embedded = level0.on(0.0, 1.0)
    assert nodes[1] == 0.5 and embedded.tolist() == [0.0, 1.0, 0.0]  # the midpoint rule
    for level in (level0, level1):
        x, w, e = level.on(0.25, 0.75)
        assert w.sum() == pytest.approx(0.5) and e.sum() == pytest.approx(0.5)
        assert ((x > 0.25) & (x < 0.75)).all()


# ---- the estimate bounds the error --------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "albert", "xlm-roberta", "modernbert"])
@pytest.mark.parametrize("tol", [DEFAULT_TOL, 1e-3])
def test_recorded_estimate_bounds_the_true_error_of_every_layer(arch, tol):
    """Against a 64-node Gauss-Legendre reference, itself converged: it agrees with 48 nodes."""
    model = tiny_model(arch, init=0.2)
    for text in TEXTS:
        got = attribute(model, text, tol=tol)
        reference = attribute(model, text, rule="gauss-legendre", steps=64)
        check = attribute(model, text, rule="gauss-legendre", steps=48)
        assert max(relative_errors(check, reference)) < 1e-5
        assert got.rule == engine.ADAPTIVE_RULE and got.tol == tol
        for record, error in zip(got.integration, relative_errors(got, reference), strict=True):
            assert record["converged"] is True
            assert record["error_estimate"] <= tol
            assert error <= record["error_estimate"], (arch, text, record, error)


def test_estimate_bounds_the_error_where_the_integrand_jumps():
    """DistilBERT's head has a ReLU: F is only piecewise smooth along alpha and the integrand jumps
    where a unit switches, so Gauss-Legendre converges slowly (64 nodes are not a reference there;
    400 are, to 2e-4). Completeness on the subinterval catches what the rule comparison misses."""
    model = tiny_model("distilbert", init=0.1)
    for text in TEXTS[:2]:
        got = attribute(model, text)
        reference = attribute(model, text, rule="gauss-legendre", steps=400)
        check = attribute(model, text, rule="gauss-legendre", steps=300)
        assert max(relative_errors(check, reference)) < 5e-4
        for record, error in zip(got.integration, relative_errors(got, reference), strict=True):
            assert record["converged"] and error <= record["error_estimate"], (text, record, error)


def test_default_is_error_controlled_and_explicit_rules_are_fixed():
    model = tiny_model("bert", init=0.2)
    default = attribute(model, TEXTS[0])
    assert default.rule == engine.ADAPTIVE_RULE and default.tol == DEFAULT_TOL
    assert [r["layer"] for r in default.integration] == default.layers
    # an integer steps alone is the paper's right Riemann sum; a rule alone takes 20 nodes
    assert attribute(model, TEXTS[0], steps=5).rule == "riemann-right"
    gl = attribute(model, TEXTS[0], rule="gauss-legendre")
    assert gl.steps == 20 and gl.tol is None
    trapezoid = attribute(model, TEXTS[0], rule="trapezoid", steps=3)
    assert [r["nodes"] for r in trapezoid.integration] == [4, 4, 4]
    assert all(r["error_estimate"] is None and r["converged"] is None for r in trapezoid.integration)
    assert trapezoid.unconverged_layers() == []


# ---- refinement where the integrand is rough ------------------------------------------------------
def test_a_rough_layer_refines_and_smooth_layers_do_not():
    model = rough_layer_model()
    got = attribute(model, TEXTS[0])
    rough, *smooth = got.integration
    assert rough["subintervals"] > 1 and rough["nodes"] > 7 and rough["converged"]
    assert all(r["nodes"] == 3 and r["subintervals"] == 1 for r in smooth)  # level 0 was enough
    reference = attribute(model, TEXTS[0], rule="gauss-legendre", steps=64)
    errors = relative_errors(got, reference)
    assert all(e <= r["error_estimate"] for e, r in zip(errors, got.integration, strict=True))


class FakePasses:
    """Stands in for the model: the integrand of layer l at alpha is a known tensor
    `[heads, n, n]`, and F(alpha) its exact integral (attention A = 1 everywhere)."""

    def __init__(self, integrands, primitives, bsz=1, n=4):
        self.integrands, self.primitives = integrands, primitives
        self.bsz, self.n, self.device = bsz, n, torch.device("cpu")
        self.gradient_rows = 0

    def per_row_layer(self, dtype):
        return 1

    def per_row(self):  # what the objective needs once per row (none here)
        return 0

    def gradients(self, groups, dtype):
        out = []
        for g in groups:
            rows = [self.integrands[g.layer](float(a)) for a in g.alphas]
            self.gradient_rows += len(rows)
            out.append(torch.stack(rows) * g.weights[:, None, None, None])
        return out

    def values(self, groups):
        return torch.tensor([self.primitives[g.layer](float(a)) for g in groups for a in g.alphas])


def test_only_the_subintervals_that_miss_tol_are_refined():
    """Layer 0 is linear in alpha; layer 1 is smooth except for a narrow bump at alpha = 0.8."""
    heads, n = 2, 4
    pattern = torch.linspace(0.5, 1.5, heads * n * n).view(heads, n, n)
    other = torch.linspace(0.2, 1.0, heads * n * n).view(heads, n, n)
    width, centre = 0.01, 0.8

    def bump(a):
        return math.exp(-(((a - centre) / width) ** 2))

    def bump_integral(a):
        return width * math.sqrt(math.pi) / 2 * (math.erf((a - centre) / width) - math.erf(-centre / width))

    integrands = {0: lambda a: (1 + a) * pattern, 1: lambda a: (1 + 0.1 * a) * pattern + 5 * bump(a) * other}
    primitives = {
        0: lambda a: float(pattern.sum()) * (a + a * a / 2),
        1: lambda a: float(pattern.sum()) * (a + 0.05 * a * a) + 5 * float(other.sum()) * bump_integral(a),
    }
    passes = FakePasses(integrands, primitives, n=n)
    settings = engine._Settings(
        None, "prob", engine.Integration(True, engine.ADAPTIVE_RULE, None), [0, 1], 2, heads, 1 << 30
    )
    ones = torch.ones(heads, n, n)
    attention = {(0, layer): (ones, ones, None) for layer in (0, 1)}
    works = [
        engine._new_work(0, p, layer, primitives[layer](0.0), primitives[layer](1.0), None, 32)
        for p, layer in enumerate((0, 1))
    ]
    engine._run_rounds(passes, works, attention, 1e-3, settings)
    linear, bumpy = works
    assert linear.converged and linear.nodes == 3 and len(linear.leaves) == 1
    assert bumpy.converged and len(bumpy.leaves) > 4
    leaves = sorted(bumpy.leaves, key=lambda leaf: leaf.a)
    assert leaves[0].a == 0.0 and leaves[-1].b == 1.0
    assert all(x.b == y.a for x, y in zip(leaves, leaves[1:], strict=False))  # they tile [0, 1]
    widths = {(leaf.a, leaf.b): leaf.b - leaf.a for leaf in leaves}
    assert max(w for (a, b), w in widths.items() if a <= centre <= b) <= 1 / 16  # refined at the bump
    assert min(w for (a, b), w in widths.items() if b <= 0.5) >= 0.25  # not where it is smooth
    exact = pattern * (1 + 0.05) + 5 * other * bump_integral(1.0)
    result = sum(leaf.result for leaf in leaves)
    assert float((result - exact).norm() / exact.norm()) <= bumpy.estimate <= 1e-3

    # with a budget of 2 subintervals the bump cannot be resolved: unconverged, and said so
    works = [engine._new_work(0, 1, 1, primitives[1](0.0), primitives[1](1.0), None, 2)]
    engine._run_rounds(passes, works, attention, 1e-3, settings)
    assert not works[0].converged and works[0].done and len(works[0].leaves) == 2
    assert works[0].estimate > 1e-3


# ---- the budget ----------------------------------------------------------------------------------
def test_unconverged_layers_are_flagged_in_the_result_and_its_files(tmp_path):
    model = tiny_model("bert", init=0.5)
    got = attribute(model, TEXTS[1], tol=1e-3, max_subintervals=1)
    missed = got.unconverged_layers()
    assert missed, got.integration
    for record in got.integration:
        assert record["subintervals"] == 1 and record["nodes"] <= 7
        if record["layer"] in missed:
            assert record["converged"] is False and record["error_estimate"] > 1e-4
    got.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["tol"] == 1e-3 and meta["integration"] == got.integration
    back = Attribution.load(tmp_path / "a")
    assert back.unconverged_layers() == missed and back.integration == got.integration
    # a bigger budget converges the same layers
    assert attribute(model, TEXTS[1], tol=1e-3, max_subintervals=128).unconverged_layers() == []


def test_hand_edited_integration_records_are_refused(tmp_path):
    attr = attribute(tiny_model("bert"), TEXTS[0])
    attr.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta.pop("tensors_sha256", None)
    meta["integration"][1]["nodes"] = "many"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match="integration"):
        Attribution.load(tmp_path)
    meta["integration"] = meta["integration"][:1]
    meta["integration"][0]["nodes"] = 3
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ResultFileError, match="integration has 1 entries for 3 layers"):
        Attribution.load(tmp_path)


def test_each_example_of_a_batch_gets_its_own_nodes():
    model = tiny_model("bert", init=0.3)
    together = list(attattr.attribute_many(model, tiny_tokenizer(), TEXTS, batch_size=3))
    nodes = []
    for text, got in zip(TEXTS, together, strict=True):
        alone = attribute(model, text)
        assert [r["nodes"] for r in got.integration] == [r["nodes"] for r in alone.integration]
        torch.testing.assert_close(got.scores, alone.scores, atol=1e-6, rtol=0)
        nodes.append([r["nodes"] for r in got.integration])
    assert len({tuple(x) for x in nodes}) > 1  # the examples did need different work


def test_memory_budget_splits_rows_without_changing_numbers():
    model = tiny_model("bert", init=0.3)
    big = attribute(model, TEXTS[1], memory_budget=1 << 34)
    small = attribute(model, TEXTS[1], memory_budget=1)  # one row per pass
    for a, b in zip(big.integration, small.integration, strict=True):
        assert (a["nodes"], a["subintervals"], a["converged"]) == (
            b["nodes"],
            b["subintervals"],
            b["converged"],
        )
        assert a["error_estimate"] == pytest.approx(b["error_estimate"], rel=1e-4)
    torch.testing.assert_close(big.scores, small.scores, atol=1e-6, rtol=0)


# ---- bf16 by measurement -----------------------------------------------------------------------
@pytest.mark.parametrize("init", [0.02, 0.2])
def test_auto_dtype_keeps_bf16_only_where_the_estimate_allows(monkeypatch, init):
    """This CPU has no fast bf16, so "auto" is forced to try it; every layer's estimate must still
    bound its true error (against fp32), and a layer in bf16 must be within tol."""
    monkeypatch.setattr(engine, "bf16_is_fast", lambda device: True)
    model = tiny_model("bert", init=init)
    tol = 0.05
    dtypes = set()
    for text in TEXTS[:2]:
        got = attribute(model, text, dtype="auto", tol=tol)
        fp32 = attribute(model, text, tol=tol)
        reference = attribute(model, text, rule="gauss-legendre", steps=64)
        for i, (record, error) in enumerate(
            zip(got.integration, relative_errors(got, reference), strict=True)
        ):
            dtypes.add(record["dtype"])
            assert record["converged"] and record["error_estimate"] <= tol
            assert error <= record["error_estimate"], (init, text, record, error)
            if record["dtype"] == "float32":  # recomputed in fp32: the fp32 result
                torch.testing.assert_close(got.scores[i], fp32.scores[i], atol=1e-6, rtol=0)
        assert got.dtype in ("bfloat16", "float32", "mixed")
    if init == 0.02:
        assert "bfloat16" in dtypes
    # where bf16's rounding alone is above a tight tol, no layer keeps it
    tight = attribute(model, TEXTS[0], dtype="auto", tol=1e-3)
    assert {r["dtype"] for r in tight.integration} == {"float32"} and tight.dtype == "float32"


def test_auto_dtype_is_fp32_without_fast_bf16(monkeypatch):
    monkeypatch.setattr(engine, "bf16_is_fast", lambda device: False)
    model = tiny_model("bert", init=0.2)
    auto = attribute(model, TEXTS[0], dtype="auto")
    plain = attribute(model, TEXTS[0])
    assert auto.dtype == "float32" and torch.equal(auto.scores, plain.scores)
    # a fixed rule has no estimate to measure bf16 with: "auto" is fp32 there
    monkeypatch.setattr(engine, "bf16_is_fast", lambda device: True)
    fixed = attribute(model, TEXTS[0], steps=4, dtype="auto")
    assert torch.equal(fixed.scores, attribute(model, TEXTS[0], steps=4).scores) and fixed.dtype == "float32"


# ---- presets -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("preset", "explicit"),
    [
        (
            "paper",
            {
                "rule": "riemann-right",
                "steps": 20,
                "dtype": "float32",
                "output": "prob",
                "target": "predicted",
            },
        ),
        ("authors", {"rule": "riemann-left", "steps": 64, "dtype": "float32"}),
    ],
)
def test_presets_equal_their_explicit_settings(preset, explicit):
    model = tiny_model("bert", init=0.2)
    by_name = attribute(model, TEXTS[1], preset=preset)
    spelled = attribute(model, TEXTS[1], **explicit)
    assert torch.equal(by_name.scores, spelled.scores)
    assert (by_name.rule, by_name.steps, by_name.tol) == (explicit["rule"], explicit["steps"], None)
    # repeating what a preset fixes is allowed
    assert torch.equal(
        attribute(model, TEXTS[1], preset=preset, rule=explicit["rule"]).scores, by_name.scores
    )


def test_preset_options_per_analysis():
    assert preset_options("authors", "pruning") == {
        "rule": "riemann-left",
        "steps": 20,
        "dtype": "float32",
        "output": "prob",
        "target": "gold",
    }
    assert preset_options("authors", "triggers")["steps"] == 64
    assert preset_options("paper", "pruning")["target"] == "gold"
    assert set(PRESETS) == {"paper", "authors"}
    with pytest.raises(InputError, match="unknown analysis"):
        preset_options("paper", "trees")


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tol": 0}, "tol must be a number between 0 and 1"),
        ({"tol": 1}, "tol must be a number between 0 and 1"),
        ({"tol": -0.1}, "tol must be a number between 0 and 1"),
        ({"tol": 1.5}, "tol must be a number between 0 and 1"),
        ({"tol": float("nan")}, "tol must be a number between 0 and 1"),
        ({"tol": "small"}, "tol must be a number between 0 and 1"),
        ({"tol": True}, "tol must be a number between 0 and 1"),
        ({"steps": 2.5}, "steps must be an integer >= 1"),
        ({"steps": "fast"}, "steps must be an integer >= 1 or 'auto'"),
        ({"steps": True}, "steps must be an integer >= 1"),
        ({"steps": 5, "tol": 0.01}, "tol applies to steps='auto'"),
        ({"steps": "auto", "rule": "riemann-left"}, "steps='auto' integrates with adaptive Gauss-Kronrod"),
        ({"max_subintervals": 0}, "max_subintervals must be an integer >= 1"),
        ({"steps": 5, "max_subintervals": 4}, "max_subintervals applies to steps='auto'"),
        ({"preset": "paper", "max_subintervals": 4}, "preset 'paper' is a fixed rule"),
        ({"dtype": "torch.bfloat16"}, "unknown dtype 'torch.bfloat16'"),
        ({"preset": "papers"}, "unknown preset 'papers'"),
        ({"preset": "paper", "rule": "gauss-legendre"}, "preset 'paper' fixes rule='riemann-right'"),
        ({"preset": "paper", "steps": 10}, "preset 'paper' fixes steps=20"),
        ({"preset": "paper", "target": "gold", "label": 1}, "preset 'paper' fixes target='predicted'"),
        ({"preset": "authors", "tol": 0.01}, "preset 'authors' is a fixed rule"),
        ({"preset": "paper", "fast": True}, "contradict each other"),
        ({"fast": True, "steps": 4}, "fast means steps='auto'"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_integration_settings_are_refused(options, message):
    with pytest.raises(InputError, match=message):
        attribute(tiny_model("bert"), TEXTS[0], **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused():
    with pytest.raises(InputError, match="CUDA is not available"):
        attribute(tiny_model("bert"), TEXTS[0], device="cuda")


# ---- planning ----------------------------------------------------------------------------------
def test_row_plan_covers_every_row_once_within_the_budget():
    rows = [(0, 10), (1, 7), (3, 25)]
    per_row_layer, layers, batch = 100, 4, 2
    budget = batch * layers * per_row_layer + 6 * 4 * per_row_layer  # room for 6 rows of layer 0
    plan = plan_rows(rows, num_layers=layers, batch=batch, per_row_layer=per_row_layer, budget=budget)
    covered = {layer: [] for layer, _ in rows}
    for chunks in plan:
        assert len({c.layer for c in chunks}) == len(chunks)  # one chunk per layer per pass
        assert [c.layer for c in chunks] == sorted(c.layer for c in chunks)
        cost = batch * layers * per_row_layer + sum(
            (c.stop - c.start) * (layers - c.layer) * per_row_layer for c in chunks
        )
        assert cost <= budget or len(chunks) == 1
        for c in chunks:
            covered[c.layer] += list(range(c.start, c.stop))
    assert covered == {layer: list(range(count)) for layer, count in rows}
    # a fixed rule: whole nodes (every example of the batch) per pass
    model = tiny_model("bert")
    for units in plan_passes(range(3), 5, 3, 4, 10, model, 1, None):
        assert all(k1 - k0 == 1 for _, k0, k1 in units)


# ---- the command line ----------------------------------------------------------------------------
def test_explain_reports_nodes_and_flags_unconverged_layers(tmp_path, save_tiny_model, run_cli):
    model_dir = save_tiny_model(tmp_path / "m", init=0.5)
    code, out, err = run_cli(
        "explain",
        TEXTS[1],
        "--model",
        model_dir,
        "--tol",
        "1e-4",
        "--max-subintervals",
        "1",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err
    out = " ".join(out.split())  # the console wraps long lines
    assert "error-controlled to tol 0.0001" in out and "nodes per layer" in out
    assert "did not reach tol 0.0001" in " ".join(err.split())
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    missed = [r["layer"] for r in meta["integration"] if r["converged"] is False]
    assert missed
    report = (tmp_path / "o" / "report.html").read_text()
    assert "did not reach it within the work budget" in report and "<th>error estimate</th>" in report
    code, out, _ = run_cli("explain", TEXTS[0], "--model", model_dir, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["tol"] == DEFAULT_TOL and len(summary["integration"]) == 3


def test_explain_paper_and_authors_presets(tmp_path, save_tiny_model, run_cli):
    model_dir = save_tiny_model(tmp_path / "m", init=0.2)
    code, out, _ = run_cli("explain", TEXTS[0], "--model", model_dir, "--paper", "--json")
    assert code == 0 and (json.loads(out)["rule"], json.loads(out)["steps"]) == ("riemann-right", 20)
    code, out, _ = run_cli("explain", TEXTS[0], "--model", model_dir, "--preset", "authors", "--json")
    assert code == 0 and (json.loads(out)["rule"], json.loads(out)["steps"]) == ("riemann-left", 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tol", "0"], "tol must be a number between 0 and 1"),
        (["--tol", "1"], "tol must be a number between 0 and 1"),
        (["--steps", "2.5"], "steps must be an integer >= 1 or 'auto'"),
        (["--steps", "many"], "steps must be an integer >= 1 or 'auto'"),
        (["--paper", "--rule", "gauss-legendre"], "fixes rule='riemann-right'"),
        (["--paper", "--steps", "10"], "fixes steps=20"),
        (["--paper", "--preset", "authors"], "contradict each other"),
        (["--preset", "nobody"], "unknown preset 'nobody'"),
        (["--steps", "8", "--tol", "0.01"], "tol applies to steps='auto'"),
        (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
    ],
)
def test_explain_refuses_bad_integration_options_in_one_line(
    tmp_path, save_tiny_model, run_cli, args, message
):
    model_dir = save_tiny_model(tmp_path / "m")
    code, out, err = run_cli("explain", TEXTS[0], "--model", model_dir, *args)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0] and not out, err
