"""Golden outputs: fixed inputs, fixed seeds, the numbers the code gave before the layout changed.

The files beside this script hold what the pre-refactor code computed for fixed inputs on the tiny
in-memory models of tests/conftest.py (attributions under every integration rule, output and
target; head importance of every method, effectiveness and pruning curves; attribution trees and a
tree-stats summary; mined patterns and an attack report) and on a briefly fine-tuned `minilm-rt`
(the integration fixture's quick build). tests/unit/test_golden.py and
tests/integration/test_golden_minilm.py recompute them with the current code and compare.

The saved files are the reference: regenerate them only deliberately, with the code whose numbers
they are meant to pin (the pre-refactor code, not the code under test):

    # compare only (writes nothing): which outputs differ from the saved files
    PYTHONPATH=/path/to/old/src .venv/bin/python -m tests.golden.capture
    # overwrite the tiny-model files
    PYTHONPATH=/path/to/old/src .venv/bin/python -m tests.golden.capture --write
    # also the minilm-rt files, from a quick build made like the `quick_rt_home` fixture:
    #   ATTATTR_HOME=/tmp/golden-home attattr train minilm-rt --max-steps 30 --dev-limit 200
    PYTHONPATH=/path/to/old/src .venv/bin/python -m tests.golden.capture --minilm /tmp/golden-home --write

Run it from the repository root (it imports tests.conftest for the tiny builders, which also makes
torch single-threaded as in the test session). `attattr.__file__` is printed: check that it is the
code you mean.

The code is reached through `Api`, a small shim that maps each function to its module in the old
flat layout (`attattr.engine`, `attattr.heads`, ...) or in the layered one (`attattr.core.engine`,
`attattr.analyses.heads`, ...), so the same script runs on both. When a function moves again, add
its new place to `LAYOUTS["new"]`.

Files: `<name>.json` holds plain values; tensors go to `<name>.safetensors` and appear in the JSON as
{"__tensor__": key}. Floats are compared within a tolerance, everything else exactly; fields the
current code reports beyond the saved ones are not compared (new information, not a change).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tests.conftest import build_tiny_model, build_tiny_tokenizer

GOLDEN_DIR = Path(__file__).resolve().parent
TENSOR_REF = "__tensor__"
SOURCE_FILE = GOLDEN_DIR / "source.json"  # which code and library versions wrote each golden file

# name -> "module:attribute" per layout
_PUBLIC = {
    "attribute_many": "attattr:attribute_many",
    "Example": "attattr.data:Example",
    "Dataset": "attattr.data:Dataset",
    "load_dataset": "attattr.data:load_dataset",
    "load_model": "attattr.models:load",
}
LAYOUTS: dict[str, dict[str, str]] = {
    "new": {
        **_PUBLIC,
        "predict": "attattr.core.encoding:predict",
        "head_importance": "attattr.analyses.heads:head_importance",
        "effectiveness": "attattr.analyses.heads:effectiveness",
        "pruning_curves": "attattr.analyses.heads:pruning_curves",
        "build_tree": "attattr.analyses.tree.build:build_tree",
        "run_tree_stats": "attattr.analyses.tree.stats:run_tree_stats",
        "mine_patterns": "attattr.analyses.triggers:mine_patterns",
        "attack": "attattr.analyses.triggers:attack",
    },
    "old": {
        **_PUBLIC,
        "predict": "attattr.inference:predict",
        "head_importance": "attattr.heads:head_importance",
        "effectiveness": "attattr.heads:effectiveness",
        "pruning_curves": "attattr.heads:pruning_curves",
        "build_tree": "attattr.tree:build_tree",
        "run_tree_stats": "attattr.tree_stats:run_tree_stats",
        "mine_patterns": "attattr.triggers:mine_patterns",
        "attack": "attattr.triggers:attack",
    },
}


class Api:
    """The functions the golden outputs exercise, looked up in one layout ("new", "old", or "auto":
    the new one when `attattr.core.engine` exists)."""

    def __init__(self, layout: str = "auto"):
        if layout == "auto":
            layout = "new" if importlib.util.find_spec("attattr.core") is not None else "old"
        self.layout = layout
        self.modules: set[str] = set()
        for name, target in LAYOUTS[layout].items():
            module, attr = target.split(":")
            setattr(self, name, getattr(importlib.import_module(module), attr))
            self.modules.add(module)


# ---------------------------------------------------------------------------------------------
# Fixed inputs
# ---------------------------------------------------------------------------------------------
RULES = ("riemann-right", "riemann-left", "riemann-mid", "trapezoid", "gauss-legendre")
OUTPUTS = ("prob", "logit", "logprob")
TARGETS = ("predicted", "gold", 1)
TINY_STEPS = 4
# The rule the files were captured with, the default of the code that wrote them. It is given
# explicitly: the default has since become the error-controlled mode.
GOLDEN_RULE = "riemann-right"
# weights drawn wider than the default 0.02, so that outputs, predictions and scores vary by input
# (at 0.02 every input gets p = 0.5000 and scores ~1e-5, below what the tolerance can see)
TINY_INIT = 0.5

# (id, text, pair, label); words outside the tiny vocabulary ("much", "wow") are spelt in letters
ATTR_INPUTS = (
    ("a0", "the cat sat on the mat", None, 1),
    ("a1", "this film was very good, but the plot was dull", None, 0),
    ("a2", "the movie is fun", "wow, it was not so bad", 1),
)
LABELLED = (
    ("h0", "a great film with good acting", None, 1),
    ("h1", "the plot was dull and the acting was awful", None, 0),
    ("h2", "it is not a good movie", None, 0),
    ("h3", "so much fun", None, 1),
    ("h4", "the dog ran down the mat again", None, 1),
    ("h5", "this movie was too dull", None, 0),
    ("h6", "the film is great", "it was very fun", 1),
    ("h7", "an awful plot", "not good", 0),
)
MINING = (
    ("m0", "the film was great fun and the acting was very good", None, 1),
    ("m1", "a dull plot, awful acting and not so much fun", None, 0),
    ("m2", "the cat", None, 1),  # too short to mine
    ("m3", "this movie is so bad that it is good", None, 1),
    ("m4", "the dog sat on the mat and it was dull", None, 0),
    ("m5", "it was a very good film", "but the plot was awful", 0),
    ("m6", "not a bad movie, the acting is great", None, 1),
    ("m7", "that was too dull", None, 0),
    ("m8", "the plot ran down and down again, so dull", None, 0),
    ("m9", "great acting with a good plot", "fun", 1),
)
LABEL_NAMES = ["negative", "positive"]
MIN_TOKENS = 10  # tiny inputs are short; m2 and m7 fall below this and are skipped
TREE_THRESHOLD = 0.2

MINILM_TEXTS = ("a gorgeous, witty and deeply moving film", "the plot is thin and the jokes fall flat")
MINILM_STEPS = 8


def _examples(api: Api, rows) -> list:
    return [api.Example(i, t, p, y) for i, t, p, y in rows]


def _dataset(api: Api, rows, split: str):
    return api.Dataset("golden-tiny", split, _examples(api, rows), list(LABEL_NAMES))


def _attribution(attr, key: str, tensors: dict[str, torch.Tensor], *, attentions: bool = True) -> dict:
    """An attribution as plain values; its scores (and attentions) become tensor references."""
    out = attr.to_json()
    out.pop("versions", None)  # library versions: not a property of the computation
    # per-layer integration records (added with the error-controlled mode): not in the old code's files
    out.pop("tol", None)
    out.pop("integration", None)
    tensors[f"{key}/scores"] = attr.scores
    out["scores"] = {TENSOR_REF: f"{key}/scores"}
    if attentions:
        tensors[f"{key}/attentions"] = attr.attentions
        out["attentions"] = {TENSOR_REF: f"{key}/attentions"}
    return out


# ---------------------------------------------------------------------------------------------
# What is captured
# ---------------------------------------------------------------------------------------------
def tiny_attributions(api: Api) -> tuple[dict, dict[str, torch.Tensor]]:
    """Item 1: the three inputs under every rule (prob of the predicted class), every output x target
    under the default rule, on the tiny BERT; every rule on the tiny RoBERTa."""
    tok = build_tiny_tokenizer()
    tensors: dict[str, torch.Tensor] = {}
    data: dict[str, Any] = {}
    for arch in ("bert", "roberta"):
        model = build_tiny_model(arch, init=TINY_INIT)
        combos = [(rule, "prob", "predicted") for rule in RULES]
        if arch == "bert":
            combos += [
                ("riemann-right", o, t) for o in OUTPUTS for t in TARGETS if (o, t) != ("prob", "predicted")
            ]
        for rule, output, target in combos:
            attrs = api.attribute_many(
                model,
                tok,
                _examples(api, ATTR_INPUTS),
                target=target,
                output=output,
                rule=rule,
                steps=TINY_STEPS,
                batch_size=8,
                model_id=f"tiny-{arch}",
            )
            for attr in attrs:
                key = f"{arch}/{rule}/{output}/{target}/{attr.example_id}"
                # attentions do not depend on rule, output or target: kept once per input
                first = (rule, output, target) == combos[0]
                data[key] = _attribution(attr, key, tensors, attentions=first)
        # the pair alone, as a (text, pair) tuple without a label: one unpadded batch of one
        (alone,) = api.attribute_many(
            model,
            tok,
            [ATTR_INPUTS[2][1:3]],
            steps=TINY_STEPS,
            rule=GOLDEN_RULE,
            batch_size=1,
            model_id=f"tiny-{arch}",
        )
        data[f"{arch}/single/a2"] = _attribution(alone, f"{arch}/single/a2", tensors, attentions=False)
    return data, tensors


def tiny_heads(api: Api) -> tuple[dict, dict[str, torch.Tensor]]:
    """Item 2: head importance of every method, effectiveness curves and pruning curves."""
    model, tok = build_tiny_model("bert", init=TINY_INIT), build_tiny_tokenizer()
    examples = _examples(api, LABELLED)
    importances = {}
    for method in ("attattr", "attention", "taylor", "accuracy-diff"):
        importances[method] = api.head_importance(
            model, tok, examples, method, batch_size=3, steps=TINY_STEPS, rule=GOLDEN_RULE, eval_batch_size=5
        )
    for seed in (0, 1):
        importances[f"random-{seed}"] = api.head_importance(model, tok, None, "random", seed=seed)
    data: dict[str, Any] = {
        "importance": {name: imp.to_dict(per_example=True) for name, imp in importances.items()},
        "effectiveness": api.effectiveness(
            model, tok, examples, step=3, batch_size=3, eval_batch_size=5, steps=TINY_STEPS, rule=GOLDEN_RULE
        ),
        "pruning": api.pruning_curves(
            model, tok, examples, importances, fractions=(0.0, 0.25, 0.5, 0.75, 1.0), eval_batch_size=5
        ),
    }
    # predictions with a per-example head mask (the hooks' gates through the encoding path)
    gates = torch.ones(len(examples), 3, 4)
    gates[:, 1, ::2] = 0.0
    gates[::2, 2, 3] = 0.0
    texts, pairs = [e.text for e in examples], [e.text_pair for e in examples]
    data["predict"] = {
        "plain": api.predict(model, tok, texts, pairs, batch_size=3).tolist(),
        "gated": api.predict(model, tok, texts, pairs, batch_size=3, head_gates=gates).tolist(),
    }
    return data, {}


def tiny_trees(api: Api) -> tuple[dict, dict[str, torch.Tensor]]:
    """Item 3: the tree of one attribution (both parent choices) and a tree-stats summary."""
    model, tok = build_tiny_model("bert", init=TINY_INIT), build_tiny_tokenizer()
    attrs = list(
        api.attribute_many(
            model, tok, _examples(api, ATTR_INPUTS), steps=TINY_STEPS, rule=GOLDEN_RULE, model_id="tiny-bert"
        )
    )
    data: dict[str, Any] = {"trees": {}}
    for attr in attrs:
        for choice in ("strongest", "authors"):
            tree = api.build_tree(attr, TREE_THRESHOLD, parent_choice=choice)
            data["trees"][f"{attr.example_id}/{choice}"] = tree.to_json()
    data["tree_stats"] = api.run_tree_stats(
        model,
        tok,
        _examples(api, LABELLED[:4]),
        threshold=TREE_THRESHOLD,
        ks=(0, 1, 2, 5, 10),
        seeds=2,
        steps=TINY_STEPS,
        rule=GOLDEN_RULE,
        batch_size=2,
        model_id="tiny-bert",
    )
    return data, {}


def tiny_triggers(api: Api) -> tuple[dict, dict[str, torch.Tensor]]:
    """Item 4: patterns mined from 8 of 10 examples, and the attack of the best two."""
    model, tok = build_tiny_model("bert", init=TINY_INIT), build_tiny_tokenizer()
    mined = api.mine_patterns(
        model,
        tok,
        _dataset(api, MINING, "train"),
        examples=8,
        min_tokens=MIN_TOKENS,
        steps=TINY_STEPS,
        rule=GOLDEN_RULE,
        order="random",
        seed=0,
        batch_size=3,
        model_id="tiny-bert",
    )
    report = api.attack(
        model,
        tok,
        mined.patterns[:2],
        _dataset(api, LABELLED, "dev"),
        top=2,
        min_score=0.0,
        seeds=(0, 1),
        batch_size=5,
    )
    data = {
        "mined": {
            "patterns": [p.to_dict() for p in mined.patterns],
            "considered": mined.considered,
            "skipped": mined.skipped,
            "settings": mined.settings,
        },
        "attack": report.to_json(),
        "attack_markdown": report.markdown(),
    }
    return data, {}


def minilm(api: Api, loaded) -> tuple[dict, dict[str, torch.Tensor]]:
    """Item 5, on the quick `minilm-rt` build (`loaded`: its `attattr.models.LoadedModel`)."""
    model, tok = loaded.model, loaded.tokenizer
    tensors: dict[str, torch.Tensor] = {}
    data: dict[str, Any] = {"attributions": {}}
    first = None
    for rule, steps in (("riemann-right", 20), ("gauss-legendre", 3)):
        attrs = api.attribute_many(
            model,
            tok,
            list(MINILM_TEXTS),
            rule=rule,
            steps=steps,
            model_id="minilm-rt",
            label_names=loaded.label_names,
        )
        for i, attr in enumerate(attrs):
            key = f"{rule}/{i}"
            data["attributions"][key] = _attribution(attr, key, tensors, attentions=rule == "riemann-right")
            if first is None:
                first = attr
    data["tree"] = api.build_tree(first, 0.4).to_json()
    # what the quick build's training reported: when these differ, so does everything after them
    data["build"] = {k: loaded.manifest[k] for k in ("steps", "final_loss", "dev_accuracy")}
    dev = api.load_dataset("rotten-tomatoes", "dev")[:8]
    data["importance"] = {
        method: api.head_importance(
            model, tok, dev.examples, method, steps=MINILM_STEPS, rule=GOLDEN_RULE
        ).to_dict(per_example=True)
        for method in ("attattr", "taylor")
    }
    mined = api.mine_patterns(
        model,
        tok,
        api.load_dataset("rotten-tomatoes", "train"),
        examples=8,
        steps=MINILM_STEPS,
        rule=GOLDEN_RULE,
        order="random",
        seed=0,
        model_id="minilm-rt",
    )
    settings = json.loads(json.dumps(mined.settings))
    # the tokenizer is named by its directory, which lies in this run's ATTATTR_HOME
    settings["tokenizer"]["name"] = Path(settings["tokenizer"]["name"]).name
    data["mined"] = {
        "patterns": [p.to_dict() for p in mined.patterns],
        "considered": mined.considered,
        "skipped": mined.skipped,
        "settings": settings,
    }
    return data, tensors


TINY: dict[str, Callable[[Api], tuple[dict, dict[str, torch.Tensor]]]] = {
    "tiny_attributions": tiny_attributions,
    "tiny_heads": tiny_heads,
    "tiny_trees": tiny_trees,
    "tiny_triggers": tiny_triggers,
}


# ---------------------------------------------------------------------------------------------
# Files and comparison
# ---------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """JSON default for what the analyses return besides plain values (numpy scalars, tensors)."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a golden file")


def normalise(data: dict) -> dict:
    """The value as it reads back from JSON (tuples become lists, keys strings, numpy plain)."""
    return json.loads(json.dumps(data, default=_plain, allow_nan=True))


def write(name: str, data: dict, tensors: dict[str, torch.Tensor], directory: Path = GOLDEN_DIR) -> None:
    (directory / f"{name}.json").write_text(json.dumps(data, default=_plain, indent=1, sort_keys=True) + "\n")
    path = directory / f"{name}.safetensors"
    if tensors:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        path.chmod(0o644)
    elif path.exists():
        path.unlink()


def read(name: str, directory: Path = GOLDEN_DIR) -> tuple[dict, dict[str, torch.Tensor]]:
    data = json.loads((directory / f"{name}.json").read_text())
    path = directory / f"{name}.safetensors"
    return data, (load_file(str(path)) if path.exists() else {})


def assert_matches(
    actual: Any,
    expected: Any,
    actual_tensors: dict[str, torch.Tensor],
    expected_tensors: dict[str, torch.Tensor],
    *,
    atol: float,
    rtol: float,
    where: str = "",
) -> None:
    """Floats (and tensors) equal within atol + rtol * |expected|; everything else identical.
    A mapping may hold keys the golden one lacks (fields added since); none may be missing.

    `actual` and `expected` are normalised JSON values whose tensors are {"__tensor__": key}."""
    __tracebackhide__ = True  # pytest: show the message (the path of the difference), not the recursion
    if isinstance(expected, dict) and TENSOR_REF in expected:
        assert isinstance(actual, dict) and TENSOR_REF in actual, (
            f"{where}: expected a tensor, got {actual!r}"
        )
        a, e = actual_tensors[actual[TENSOR_REF]], expected_tensors[expected[TENSOR_REF]]
        torch.testing.assert_close(a, e, atol=atol, rtol=rtol, msg=lambda m: f"{where}: {m}")
    elif isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {type(actual).__name__}"
        # fields the current code adds (new information) are allowed; every golden field must stay
        missing = sorted(set(expected) - set(actual))
        assert not missing, f"{where}: missing {missing}"
        for k in expected:
            assert_matches(
                actual[k],
                expected[k],
                actual_tensors,
                expected_tensors,
                atol=atol,
                rtol=rtol,
                where=f"{where}/{k}",
            )
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {type(actual).__name__}"
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_matches(
                a, e, actual_tensors, expected_tensors, atol=atol, rtol=rtol, where=f"{where}[{i}]"
            )
    elif isinstance(expected, float):
        assert isinstance(actual, int | float) and not isinstance(actual, bool), (
            f"{where}: {actual!r} != {expected!r}"
        )
        if math.isnan(expected) or math.isinf(expected):
            assert str(float(actual)) == str(expected), f"{where}: {actual!r} != {expected!r}"
        else:
            assert abs(actual - expected) <= atol + rtol * abs(expected), (
                f"{where}: {actual!r} != {expected!r}"
            )
    else:
        assert type(actual) is type(expected) and actual == expected, f"{where}: {actual!r} != {expected!r}"


def check(
    name: str,
    data: dict,
    tensors: dict[str, torch.Tensor],
    *,
    atol: float,
    rtol: float,
    directory: Path = GOLDEN_DIR,
) -> None:
    """Compare freshly computed outputs with the saved golden files `name`."""
    expected, expected_tensors = read(name, directory)
    assert_matches(normalise(data), expected, tensors, expected_tensors, atol=atol, rtol=rtol, where=name)


def _source_commit() -> str | None:
    import attattr

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(attattr.__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=("auto", "old", "new"), default="auto")
    parser.add_argument(
        "--minilm", type=Path, metavar="HOME", help="an ATTATTR_HOME holding the quick minilm-rt build"
    )
    parser.add_argument("--only-minilm", action="store_true", help="skip the tiny-model outputs")
    parser.add_argument("--write", action="store_true", help="overwrite the golden files (default: compare)")
    args = parser.parse_args(argv)

    import transformers

    import attattr

    api = Api(args.layout)
    commit = _source_commit()
    print(f"attattr from {attattr.__file__} ({api.layout} layout, commit {commit})")
    origin = {
        "layout": api.layout,
        "commit": commit,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    jobs = {} if args.only_minilm else dict(TINY)
    loaded = None
    if args.minilm is not None:
        loaded = api.load_model("minilm-rt", home=args.minilm, build=False, quiet=True)
        jobs["minilm"] = lambda a: minilm(a, loaded)
    sources = json.loads(SOURCE_FILE.read_text()) if SOURCE_FILE.exists() else {}
    failed = 0
    for name, fn in jobs.items():
        data, tensors = fn(api)
        if args.write:
            write(name, data, tensors)
            sources[name] = dict(origin)
            if name == "minilm":
                # how the quick build was trained (not compared: a hint when the build differs)
                sources[name]["build"] = {
                    k: loaded.manifest.get(k) for k in ("threads", "steps", "final_loss")
                }
            print(f"wrote {name}")
            continue
        try:
            check(name, data, tensors, atol=1e-6 if name != "minilm" else 1e-5, rtol=1e-5)
            print(f"{name}: matches")
        except AssertionError as exc:
            failed += 1
            print(f"{name}: DIFFERS: {str(exc)[:2000]}")
    if args.write:
        SOURCE_FILE.write_text(json.dumps(sources, indent=1, sort_keys=True) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
