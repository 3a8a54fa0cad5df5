"""Head importance, gating, pruning curves, correlation and resumable runs, on tiny random models."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from attattr.analyses import heads
from attattr.analyses.runs import MemoryStore, RunStore
from attattr.core.hooks import AttentionHook
from tests.tiny import tiny_model, tiny_tokenizer

LAYERS, HEADS, HIDDEN = 3, 4, 32
TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "good film very good",
    "not a bad film",
    "the dog sat down again and again",
    "it is bad",
    "the film is not good and the cat is very bad",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Ex:
    id: str
    text: str
    text_pair: str | None
    label: int | None


def sharp_model(dtype=torch.float32, seed: int = 0):
    """A tiny BERT whose predictions react to pruning single heads: a large classifier, centred so
    that the test sentences fall on both sides of the decision boundary."""
    model = tiny_model("bert", layers=LAYERS, heads=HEADS, seed=seed)
    tok = tiny_tokenizer()
    with torch.no_grad():
        model.classifier.weight.mul_(1000)
        logits = model(**tok(TEXTS, padding=True, return_tensors="pt")).logits
        model.classifier.bias.sub_(logits.mean(0))
    return model.to(dtype)


def examples(model, tok) -> list[Ex]:
    """Gold labels: the unpruned prediction for even examples, the other class for odd ones."""
    with torch.no_grad():
        enc = tok(TEXTS, padding=True, return_tensors="pt")
        pred = model(**enc).logits.argmax(-1).tolist()
    return [
        Ex(f"e{i}", t, None, p if i % 2 == 0 else 1 - p)
        for i, (t, p) in enumerate(zip(TEXTS, pred, strict=True))
    ]


# ---------------------------------------------------------------------------------------------
# gating = pruning
# ---------------------------------------------------------------------------------------------
def _capture_self_attention(model):
    """Forward hooks on every BertSelfAttention: inputs (hidden states) and context outputs."""
    seen = {"in": {}, "out": {}}
    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):

        def pre(module, args, kwargs, i=i):
            seen["in"][i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def post(module, args, kwargs, output, i=i):
            seen["out"][i] = output[0].detach().clone()

        handles.append(layer.attention.self.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.attention.self.register_forward_hook(post, with_kwargs=True))
    return seen, handles


def _manual_context(module, hidden, mask, zero_head=None):
    """Per-head softmax(QK^T/sqrt(d) + mask) V written out by hand; [B, n, hidden]."""
    b, n, _ = hidden.shape
    d = module.attention_head_size

    def split(x):
        return x.view(b, n, -1, d).transpose(1, 2)

    q, k, v = split(module.query(hidden)), split(module.key(hidden)), split(module.value(hidden))
    scores = q @ k.transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    probs = scores.softmax(-1)
    if zero_head is not None:
        probs[:, zero_head] = 0.0
    return (probs @ v).transpose(1, 2).reshape(b, n, -1)


def test_gated_head_context_is_exactly_zero_and_other_heads_untouched():
    model, tok = tiny_model("bert", layers=LAYERS, heads=HEADS), tiny_tokenizer()
    enc = tok(TEXTS[:3], padding=True, return_tensors="pt")
    d = HIDDEN // HEADS
    layer, head = 1, 2
    seen, handles = _capture_self_attention(model)
    try:
        with torch.no_grad():
            model(**enc)  # eager reference
            eager = {k: dict(v) for k, v in seen.items()}
            gates = torch.ones(LAYERS, HEADS)
            gates[layer, head] = 0.0
            with AttentionHook(model, head_gates=gates):
                model(**enc)
            gated = {k: dict(v) for k, v in seen.items()}
            manual = _manual_context(
                model.bert.encoder.layer[layer].attention.self,
                gated["in"][layer],
                enc["attention_mask"],
                zero_head=head,
            )
    finally:
        for h in handles:
            h.remove()
    cols = slice(head * d, (head + 1) * d)
    out = gated["out"][layer]
    assert torch.equal(out[..., cols], torch.zeros_like(out[..., cols]))  # exactly zero
    others = torch.ones(HIDDEN, dtype=torch.bool)
    others[cols] = False
    # the other heads of the gated layer: as eager and as the hand computation
    torch.testing.assert_close(out[..., others], eager["out"][layer][..., others], rtol=0, atol=1e-6)
    torch.testing.assert_close(out, manual, rtol=0, atol=1e-6)
    assert out[..., others].abs().sum() > 0
    # layers below are untouched; the layer above sees the change
    torch.testing.assert_close(gated["out"][0], eager["out"][0], rtol=0, atol=1e-6)
    assert not torch.allclose(gated["out"][layer + 1], eager["out"][layer + 1], atol=1e-6)


def test_per_example_gates_only_touch_their_own_example():
    model, tok = tiny_model("bert", layers=LAYERS, heads=HEADS), tiny_tokenizer()
    enc = tok(TEXTS[:3], padding=True, return_tensors="pt")
    gates = torch.ones(3, LAYERS, HEADS)
    gates[1, 0, 3] = 0.0
    gates[1, 2, 0] = 0.0
    with torch.no_grad():
        plain = model(**enc).logits
        with AttentionHook(model, head_gates=gates):
            gated = model(**enc).logits
        with AttentionHook(model, head_gates=gates[1]):
            single = model(**enc).logits[1]
    torch.testing.assert_close(gated[[0, 2]], plain[[0, 2]], rtol=0, atol=1e-6)
    assert not torch.allclose(gated[1], plain[1], atol=1e-6)
    torch.testing.assert_close(gated[1], single, rtol=0, atol=1e-6)


def test_gate_helpers():
    gates = heads.gates_pruning([0, 5, 11], LAYERS, HEADS)
    expected = torch.ones(LAYERS, HEADS)
    expected[0, 0] = expected[1, 1] = expected[2, 3] = 0
    assert torch.equal(gates, expected)
    scores = torch.tensor([[[3.0, 1.0], [2.0, 5.0]], [[0.0, 0.0], [1.0, 0.0]]])  # [2 examples, 2, 2]
    small = heads.per_example_gates(scores, 2)
    large = heads.per_example_gates(scores, 1, largest=True)
    assert small[0].tolist() == [[1, 0], [0, 1]]
    assert small[1].tolist() == [[0, 0], [1, 1]]  # ties: the lower head index first
    assert large[0].tolist() == [[1, 1], [1, 0]]
    assert large[1].tolist() == [[1, 1], [0, 1]]
    assert heads.prune_counts(72, 4)[-2:] == [68, 72] and heads.prune_counts(10, 4) == [0, 4, 8, 10]


# ---------------------------------------------------------------------------------------------
# importance methods against independent computations
# ---------------------------------------------------------------------------------------------
def test_taylor_matches_finite_differences_of_the_gates():
    model, tok = sharp_model(torch.float64), tiny_tokenizer()
    exs = examples(model, tok)[:4]
    imp = heads.head_importance(model, tok, exs, "taylor", batch_size=3)  # batches mix lengths
    eps = 1e-6
    fd = torch.zeros(len(exs), LAYERS, HEADS, dtype=torch.float64)
    for e, ex in enumerate(exs):
        enc = tok(ex.text, return_tensors="pt")

        def loss(g, enc=enc, ex=ex):
            with torch.no_grad(), AttentionHook(model, head_gates=g):
                logits = model(**enc).logits
            return torch.nn.functional.cross_entropy(logits, torch.tensor([ex.label])).item()

        for layer in range(LAYERS):
            for head in range(HEADS):
                up = torch.ones(LAYERS, HEADS, dtype=torch.float64)
                down = up.clone()
                up[layer, head] += eps
                down[layer, head] -= eps
                fd[e, layer, head] = abs(loss(up) - loss(down)) / (2 * eps)
    assert fd.max() > 1e-3  # the check is not vacuous
    torch.testing.assert_close(imp.per_example, fd, rtol=1e-5, atol=1e-8)
    mean = fd.mean(0)
    torch.testing.assert_close(imp.scores, mean / mean.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(imp.scores.norm(dim=1), torch.ones(LAYERS, dtype=torch.float64))


def _prune_by_hand(model, layer, head):
    """Zero head `head`'s slice of layer `layer`'s context output (eager attention, no gates)."""
    d = HIDDEN // HEADS

    def hook(module, args, output):
        context = output[0].clone()
        context[..., head * d : (head + 1) * d] = 0.0
        return (context, *output[1:])

    return model.bert.encoder.layer[layer].attention.self.register_forward_hook(hook)


def test_accuracy_diff_matches_pruning_by_hand():
    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)
    imp = heads.head_importance(model, tok, exs, "accuracy-diff", batch_size=3, eval_batch_size=10)
    labels = torch.tensor([x.label for x in exs])
    enc = tok([x.text for x in exs], padding=True, return_tensors="pt")

    def evaluate():
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)
        return (probs.argmax(-1) == labels).double().mean().item(), probs[torch.arange(len(exs)), labels]

    full_acc, full_prob = evaluate()
    acc_drop = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    prob_drop = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    for layer in range(LAYERS):
        for head in range(HEADS):
            handle = _prune_by_hand(model, layer, head)
            try:
                acc, prob = evaluate()
            finally:
                handle.remove()
            acc_drop[layer, head] = full_acc - acc
            prob_drop[layer, head] = (full_prob - prob).double().mean()
    assert acc_drop.abs().sum() > 0  # some single head changes a prediction
    torch.testing.assert_close(imp.scores, acc_drop, rtol=0, atol=1e-12)
    torch.testing.assert_close(imp.secondary, prob_drop, rtol=0, atol=1e-5)
    assert imp.settings["accuracy"] == pytest.approx(full_acc)
    # ordering: accuracy drop first, then probability drop, then head index
    order = imp.ascending().tolist()
    keys = [(acc_drop.flatten()[i].item(), prob_drop.flatten()[i].item(), i) for i in range(LAYERS * HEADS)]
    assert order == [k[2] for k in sorted(keys)]


def test_attattr_and_attention_importance_are_means_of_per_example_maxima():
    import attattr

    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)[:4]
    imp = heads.head_importance(model, tok, exs, "attattr", steps=4, batch_size=2)
    att = heads.head_importance(model, tok, exs, "attention", batch_size=3)
    singles = [attattr.attribute(model, tok, x.text, target="gold", label=x.label, steps=4) for x in exs]
    by_hand = torch.stack([a.scores.amax(dim=(2, 3)) for a in singles]).double()  # [E, L, H]
    torch.testing.assert_close(imp.per_example, by_hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(imp.scores, by_hand.mean(0), rtol=1e-4, atol=1e-6)
    # attention: max weight per head, one example at a time (no padding) with the hook recording
    maxima = []
    for x in exs:
        with torch.no_grad(), AttentionHook(model, record=True) as hook:
            model(**tok(x.text, return_tensors="pt"))
            maxima.append(torch.stack([hook.attentions[i][0].amax(dim=(1, 2)) for i in range(LAYERS)]))
    torch.testing.assert_close(att.per_example, torch.stack(maxima).double(), rtol=0, atol=1e-6)
    assert imp.example_ids == [x.id for x in exs]


def test_select_examples_samples_across_a_label_sorted_split():
    items = [Ex(str(i), "the cat", None, int(i >= 50)) for i in range(100)]  # sorted by label
    first = heads.select_examples(items, 20, seed=None)
    sample = heads.select_examples(items, 20, seed=0)
    assert [x.id for x in first] == [str(i) for i in range(20)]
    assert len({x.id for x in sample}) == 20 and {x.label for x in sample} == {0, 1}
    assert [int(x.id) for x in sample] == sorted(int(x.id) for x in sample)  # split order kept
    assert [x.id for x in heads.select_examples(items, 20, seed=0)] == [x.id for x in sample]
    assert [x.id for x in heads.select_examples(items, 20, seed=1)] != [x.id for x in sample]
    assert len(heads.select_examples(items, 500)) == 100


def test_random_importance_is_seeded():
    model = tiny_model("bert", layers=LAYERS, heads=HEADS)
    a = heads.head_importance(model, None, None, "random", seed=3)
    b = heads.head_importance(model, None, None, "random", seed=3)
    c = heads.head_importance(model, None, None, "random", seed=4)
    assert torch.equal(a.scores, b.scores) and not torch.equal(a.scores, c.scores)
    assert sorted(a.ascending().tolist()) == list(range(LAYERS * HEADS))


def test_importance_errors_are_clear():
    model, tok = sharp_model(), tiny_tokenizer()
    with pytest.raises(heads.InputError, match="unknown importance method"):
        heads.head_importance(model, tok, [Ex("a", "the cat", None, 0)], "bogus")
    with pytest.raises(heads.InputError, match="needs the gold label"):
        heads.head_importance(model, tok, [Ex("a", "the cat", None, None)], "taylor")
    with pytest.raises(heads.InputError, match="out of range"):
        heads.head_importance(model, tok, [Ex("a", "the cat", None, 5)], "taylor")
    with pytest.raises(heads.InputError, match="unique"):
        heads.head_importance(
            model, tok, [Ex("a", "the cat", None, 0), Ex("a", "a dog", None, 1)], "attention"
        )


def test_importance_file_round_trip(tmp_path):
    imp = heads.Importance(
        torch.tensor([[0.5, 0.5], [0.1, 0.9]], dtype=torch.float64),
        "accuracy-diff",
        ["x", "y"],
        {"model_id": "m"},
        secondary=torch.tensor([[0.2, 0.1], [0.0, 0.0]], dtype=torch.float64),
    )
    assert imp.ascending().tolist() == [2, 1, 0, 3]  # 0.5 tie broken by the secondary score
    back = heads.Importance.load(imp.save(tmp_path / "imp.json"))
    assert torch.equal(back.scores, imp.scores) and torch.equal(back.secondary, imp.secondary)
    assert back.example_ids == ["x", "y"] and back.settings == {"model_id": "m"}
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(heads.ResultFileError, match="not an attattr head-importance file"):
        heads.Importance.load(tmp_path / "bad.json")


# ---------------------------------------------------------------------------------------------
# effectiveness (Fig. 2) and pruning curves (Fig. 3)
# ---------------------------------------------------------------------------------------------
def test_effectiveness_matches_per_example_pruning_by_hand():
    import attattr
    from attattr.core.encoding import predict

    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)[:5]
    result = heads.effectiveness(model, tok, exs, step=5, steps=4, batch_size=2)
    assert result["counts"] == [0, 5, 10, 12]
    for kpos, k in enumerate(result["counts"]):
        for curve in heads.CURVES:
            correct, probs = [], []
            for x in exs:
                a = attattr.attribute(model, tok, x.text, target="gold", label=x.label, steps=4)
                table = (
                    a.scores.amax(dim=(2, 3))
                    if curve.startswith("attattr")
                    else a.attentions.amax(dim=(2, 3))
                )
                flat = table.flatten().tolist()
                if curve.endswith("smallest"):
                    ranked = sorted(range(len(flat)), key=lambda i: (flat[i], i))
                else:
                    ranked = sorted(range(len(flat)), key=lambda i: (-flat[i], i))
                gates = torch.ones(LAYERS * HEADS)
                gates[ranked[:k]] = 0
                p = predict(model, tok, [x.text], head_gates=gates.view(LAYERS, HEADS))[0]
                correct.append(float(p.argmax() == x.label))
                probs.append(float(p[x.label]))
            assert result["curves"][curve]["accuracy"][kpos] == pytest.approx(np.mean(correct))
            assert result["curves"][curve]["probability"][kpos] == pytest.approx(np.mean(probs), abs=1e-5)
    # nothing pruned: the model's own accuracy; everything pruned: the same for all four orderings
    assert result["curves"]["attattr-smallest"]["accuracy"][0] == pytest.approx(3 / 5)
    assert len({result["curves"][c]["probability"][-1] for c in heads.CURVES}) == 1


def test_pruning_curves_match_pruning_by_hand():
    from attattr.core.encoding import predict

    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)
    scores = torch.arange(LAYERS * HEADS, dtype=torch.float64).flip(0).view(LAYERS, HEADS)
    imps = {"fixed": heads.Importance(scores, "fixed")}
    for s in range(3):
        imps[f"random-{s}"] = heads.head_importance(model, tok, None, "random", seed=s)
    store = MemoryStore()
    result = heads.pruning_curves(model, tok, exs, imps, fractions=(0.0, 0.5, 1.0), store=store)
    labels = torch.tensor([x.label for x in exs])

    def accuracy(pruned):
        gates = torch.ones(LAYERS * HEADS)
        gates[list(pruned)] = 0
        probs = predict(model, tok, [x.text for x in exs], head_gates=gates.view(LAYERS, HEADS))
        return (probs.argmax(-1) == labels).double().mean().item()

    total = LAYERS * HEADS
    # "fixed" scores decrease with the head index: the least important are the last heads
    expected = [accuracy([]), accuracy(range(total // 2, total)), accuracy(range(total))]
    assert result["methods"]["fixed"]["accuracy"] == pytest.approx(expected)
    per_seed = []
    for s in range(3):
        order = torch.argsort(imps[f"random-{s}"].scores.flatten()).tolist()
        per_seed.append([accuracy([]), accuracy(order[: total // 2]), accuracy(order)])
    assert result["methods"]["random"]["accuracy"] == pytest.approx(np.mean(per_seed, axis=0).tolist())
    assert result["methods"]["random"]["accuracy_std"] == pytest.approx(np.std(per_seed, axis=0).tolist())
    assert result["counts"] == [0, 6, 12]
    # identical pruned sets are evaluated once: 0 and all heads shared by the four orders
    assert len(store.records) == 2 + 4


# ---------------------------------------------------------------------------------------------
# correlation
# ---------------------------------------------------------------------------------------------
def test_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(LAYERS, HEADS))
    tables = {
        "a": base,
        "b": base + 0.3 * rng.normal(size=base.shape),
        "c": rng.normal(size=base.shape),
    }
    imps = {k: heads.Importance(torch.tensor(v), "attattr") for k, v in tables.items()}
    result = heads.correlate(imps)

    def ranks(x):
        return np.argsort(np.argsort(x)).astype(float)

    for pair in result["pairs"]:
        x, y = tables[pair["a"]].ravel(), tables[pair["b"]].ravel()
        assert pair["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1])
        assert pair["spearman"] == pytest.approx(np.corrcoef(ranks(x), ranks(y))[0, 1])
    assert result["names"] == ["a", "b", "c"]
    assert result["pearson"][0][1] > 0.8 and result["pearson"][0][1] == result["pearson"][1][0]
    with pytest.raises(heads.InputError, match="at least two"):
        heads.correlate({"a": imps["a"]})


# ---------------------------------------------------------------------------------------------
# resumption
# ---------------------------------------------------------------------------------------------
class Stop(Exception):
    pass


def _stop_after(batches: int):
    calls = []

    def callback(n):
        calls.append(n)
        if len(calls) == batches:
            raise Stop

    return callback


def test_interrupted_importance_run_resumes_with_identical_numbers(tmp_path, monkeypatch):
    import attattr.methods.attribution as attribution

    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)
    path = tmp_path / "run.jsonl"
    with pytest.raises(Stop):
        heads.head_importance(
            model, tok, exs, "attattr", steps=4, batch_size=2, store=path, on_example=_stop_after(2)
        )
    assert len(path.read_text().splitlines()) == 1 + 4  # header + two batches of two
    header = json.loads(path.read_text().splitlines()[0])
    assert header["kind"] == "heads.importance" and header["settings"]["steps"] == 4
    with open(path, "a") as f:  # a record cut short by a kill
        f.write('{"id": "e6", "attattr": [[0.1, ')

    computed: list[str] = []
    original = attribution.attribution_records

    def counting(model, tok, members, **kw):
        computed.extend(x.id for x in members)
        return original(model, tok, members, **kw)

    monkeypatch.setattr(attribution, "attribution_records", counting)
    resumed = heads.head_importance(model, tok, exs, "attattr", steps=4, batch_size=2, store=path)
    assert sorted(computed) == sorted(x.id for x in exs if x.id not in _ids_in(path, before=5))
    assert len(computed) == 3
    computed.clear()
    fresh = heads.head_importance(model, tok, exs, "attattr", steps=4, batch_size=2)
    assert torch.equal(resumed.scores, fresh.scores)
    assert torch.equal(resumed.per_example, fresh.per_example)
    assert resumed.example_ids == [x.id for x in exs]
    # a finished run resumes without computing anything
    computed.clear()
    again = heads.head_importance(model, tok, exs, "attattr", steps=4, batch_size=2, store=path)
    assert computed == [] and torch.equal(again.scores, fresh.scores)
    # the same file with other settings is refused by name
    with pytest.raises(heads.ResultFileError, match=r"other settings \(steps\)"):
        heads.head_importance(model, tok, exs, "attattr", steps=3, batch_size=2, store=path)
    # a folder holds one file per settings
    for steps in (3, 4):
        heads.head_importance(
            model, tok, exs[:2], "attattr", steps=steps, batch_size=2, runs_dir=tmp_path / "r"
        )
    assert len(list((tmp_path / "r").glob("importance-attattr-*.jsonl"))) == 2


def _ids_in(path, before: int) -> set[str]:
    lines = path.read_text().splitlines()[1:before]
    return {json.loads(line)["id"] for line in lines}


def test_interrupted_effectiveness_run_resumes_with_identical_numbers(tmp_path):
    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)
    path = tmp_path / "eff.jsonl"
    kwargs = dict(step=3, steps=4, batch_size=3)
    with pytest.raises(Stop):
        heads.effectiveness(model, tok, exs, store=path, on_example=_stop_after(1), **kwargs)
    assert len(path.read_text().splitlines()) == 1 + 3
    resumed = heads.effectiveness(model, tok, exs, store=path, **kwargs)
    fresh = heads.effectiveness(model, tok, exs, **kwargs)
    assert resumed["curves"] == fresh["curves"]
    assert resumed["example_ids"] == [x.id for x in exs]


def test_pruning_run_resumes_from_its_store(tmp_path):
    model, tok = sharp_model(), tiny_tokenizer()
    exs = examples(model, tok)
    scores = torch.arange(LAYERS * HEADS, dtype=torch.float64).view(LAYERS, HEADS)
    imps = {"fixed": heads.Importance(scores, "fixed")}
    first = heads.pruning_curves(model, tok, exs, imps, fractions=(0.0, 0.5), runs_dir=tmp_path)
    (path,) = tmp_path.glob("prune-eval-*.jsonl")
    assert len(path.read_text().splitlines()) == 1 + 2
    again = heads.pruning_curves(model, tok, exs, imps, fractions=(0.0, 0.5, 1.0), runs_dir=tmp_path)
    assert again["methods"]["fixed"]["accuracy"][:2] == first["methods"]["fixed"]["accuracy"]
    assert len(path.read_text().splitlines()) == 1 + 3  # only the new pruned set was evaluated


# ---------------------------------------------------------------------------------------------
# the command line, end to end
# ---------------------------------------------------------------------------------------------
def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    import sys

    from attattr.cli import main

    monkeypatch.setattr(sys, "argv", ["attattr", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


@pytest.fixture
def tiny_files(tmp_path):
    """Two tiny classifiers saved as Hugging Face directories and a small labelled CSV."""
    tok = tiny_tokenizer()
    dirs = []
    for seed in (0, 1):
        model = sharp_model(seed=seed)
        path = tmp_path / f"model{seed}"
        model.save_pretrained(path)
        tok.save_pretrained(path)
        dirs.append(path)
    csv = tmp_path / "data.csv"
    rows = ["text,label"] + [f'"{t}",{i % 2}' for i, t in enumerate(TEXTS)]
    csv.write_text("\n".join(rows) + "\n")
    return dirs, csv


def test_cli_end_to_end(tiny_files, tmp_path, monkeypatch, capsys):
    (model_a, model_b), csv = tiny_files
    out = tmp_path / "out"
    common = ["--data", csv, "--steps", "3", "--batch-size", "3"]

    code, stdout, _ = _cli(
        monkeypatch, capsys, "heads", "importance", "--model", model_a, *common, "--examples", 5,
        "--method", "taylor", "--out", out, "--json",
    )  # fmt: skip
    assert code == 0
    printed = json.loads(stdout)
    saved = heads.Importance.load(out / "importance-taylor.json")
    assert printed["method"] == "taylor" and len(saved.example_ids) == 5
    assert saved.scores.shape == (LAYERS, HEADS) and saved.per_example.shape == (5, LAYERS, HEADS)
    assert (out / "importance-taylor.png").stat().st_size > 0 and (out / "importance-taylor.svg").exists()
    assert len(list((out / "runs").glob("importance-taylor-*.jsonl"))) == 1

    code, _, _ = _cli(
        monkeypatch, capsys, "heads", "effectiveness", "--model", model_a, *common, "--examples", 4,
        "--step", 5, "--out", out,
    )  # fmt: skip
    assert code == 0
    eff = json.loads((out / "effectiveness.json").read_text())
    assert eff["counts"] == [0, 5, 10, 12] and set(eff["curves"]) == set(heads.CURVES)
    assert (out / "effectiveness.png").exists()
    assert "effectiveness" in (out / "report.html").read_text()

    code, _, _ = _cli(
        monkeypatch, capsys, "heads", "prune", "--model", model_a, *common, "--examples", 4,
        "--methods", "attattr,accuracy-diff,random", "--seeds", 2, "--out", out,
    )  # fmt: skip
    assert code == 0
    pruned = json.loads((out / "prune.json").read_text())
    assert set(pruned["methods"]) == {"attattr", "accuracy-diff", "random"}
    assert pruned["eval_examples"] == len(TEXTS) and len(pruned["methods"]["attattr"]["accuracy"]) == 11
    assert pruned["methods"]["random"]["seeds"] == ["random-0", "random-1"]
    # nothing pruned: the unpruned accuracy for every method; all pruned: the same model for all
    assert len({m["accuracy"][0] for m in pruned["methods"].values()}) == 1
    assert (out / "prune.png").exists() and (out / "importance-attattr.png").exists()
    assert (out / "report.html").is_file()

    # pruning by a saved importance file gives the curve of computing that method, without computing it
    code, _, _ = _cli(
        monkeypatch, capsys, "heads", "prune", "--model", model_a, *common, "--examples", 5,
        "--methods", "taylor", "--out", tmp_path / "computed",
    )  # fmt: skip
    assert code == 0
    code, _, _ = _cli(
        monkeypatch, capsys, "heads", "prune", "--model", model_a, *common, "--examples", 5,
        "--methods", "random", "--seeds", 1, "--importance", out / "importance-taylor.json",
        "--out", tmp_path / "given",
    )  # fmt: skip
    assert code == 0
    computed = json.loads((tmp_path / "computed" / "prune.json").read_text())
    given = json.loads((tmp_path / "given" / "prune.json").read_text())
    assert set(given["methods"]) == {"random", "taylor"} and given["settings"]["given_importance"] == {
        "taylor": 5
    }
    assert given["methods"]["taylor"]["accuracy"] == computed["methods"]["taylor"]["accuracy"]
    assert not list((tmp_path / "given" / "runs").glob("importance-taylor-*"))  # not computed again

    code, stdout, _ = _cli(
        monkeypatch, capsys, "heads", "correlate", "--models", model_a, model_b, "--data", f"{csv},{csv}",
        "--examples", 4, "--steps", 3, "--out", tmp_path / "corr", "--json",
    )  # fmt: skip
    assert code == 0
    corr = json.loads(stdout)
    assert len(corr["pairs"]) == 1 and -1 <= corr["pairs"][0]["pearson"] <= 1
    assert (tmp_path / "corr" / "correlation-pairs.png").exists()
    assert (tmp_path / "corr" / "correlation-matrix.png").exists()
    # from saved importance files, no model needed
    code, stdout, _ = _cli(
        monkeypatch, capsys, "heads", "correlate", "--importance", out / "importance-attattr.json",
        "--importance", out / "importance-taylor.json", "--out", tmp_path / "corr2", "--json",
    )  # fmt: skip
    assert code == 0 and len(json.loads(stdout)["pairs"]) == 1


def test_cli_errors_are_one_line(tiny_files, tmp_path, monkeypatch, capsys):
    (model_a, _), csv = tiny_files
    wrong = tmp_path / "wrong.json"
    heads.Importance(torch.zeros(1, 3, dtype=torch.float64), "taylor").save(wrong)
    prune = ["heads", "prune", "--model", model_a, "--data", csv, "--out", tmp_path / "pruned"]
    code, _, err = _cli(monkeypatch, capsys, *prune, "--importance", wrong)
    assert code == 2 and f"importance 'taylor' is for 1x3 heads, the model has {LAYERS}x{HEADS}" in err
    assert err.count("\n") == 1 and not (tmp_path / "pruned").exists()
    code, _, err = _cli(monkeypatch, capsys, *prune, "--importance", wrong, "--importance", wrong)
    assert code == 2 and "two --importance files for the method 'taylor'" in err
    code, _, err = _cli(monkeypatch, capsys, *prune, "--importance", tmp_path / "none.json")
    assert code == 2 and "importance file not found" in err
    code, _, err = _cli(monkeypatch, capsys, "heads", "importance", "--model", model_a, "--data", csv,
                        "--method", "bogus", "--out", tmp_path)  # fmt: skip
    assert code == 2 and "unknown method 'bogus'" in err and "Traceback" not in err
    code, _, err = _cli(monkeypatch, capsys, "heads", "correlate", "--models", model_a, "--out", tmp_path)
    assert code == 2 and "at least two models" in err
    code, _, err = _cli(monkeypatch, capsys, "heads", "importance", "--model", model_a, "--data",
                        tmp_path / "missing.csv", "--out", tmp_path)  # fmt: skip
    assert code == 2 and "no such file" in err


def test_cli_runs_with_other_settings_coexist_and_rejected_commands_write_nothing(
    tiny_files, tmp_path, monkeypatch, capsys
):
    from attattr.analyses.runs import Job

    (model_a, _), csv = tiny_files
    out = tmp_path / "out"
    base = ["heads", "importance", "--model", model_a, "--data", csv, "--examples", 3, "--steps", 2]
    base += ["--batch-size", 2, "--out", out]
    for extra, message in (
        (["--steps", 0], "steps must be an integer >= 1 or 'auto', got '0'"),
        (["--rule", "bogus"], "unknown integration rule 'bogus'"),
        (["--batch-size", 0], "batch size must be an integer >= 1"),
        (["--method", "bogus"], "unknown method 'bogus'"),
    ):
        code, _, err = _cli(monkeypatch, capsys, *base, *extra)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()  # nothing written, so the corrected command is not refused
    code, _, err = _cli(monkeypatch, capsys, *base, "--rule", "riemann-left", "--text-column", "text")
    assert code == 0, err
    code, _, err = _cli(monkeypatch, capsys, *base)  # another rule into the same folder
    assert code == 0, err
    files = sorted((out / "runs").glob("importance-attattr-*.jsonl"))
    assert len(files) == 2
    rules = {json.loads(f.read_text().splitlines()[0])["settings"]["rule"] for f in files}
    assert rules == {"riemann-left", "riemann-right"}
    # --fresh starts over: stored records are computed again, not reused
    path = next(f for f in files if "riemann-right" in f.read_text().splitlines()[0])
    before = path.read_text()
    lines = before.splitlines()
    edited = [lines[0]] + [json.dumps({**json.loads(x), "probability": 123.0}) for x in lines[1:]]
    path.write_text("\n".join(edited) + "\n")
    code, _, _ = _cli(monkeypatch, capsys, *base)
    assert code == 0 and "123.0" in path.read_text()  # resumed: nothing recomputed
    code, _, _ = _cli(monkeypatch, capsys, *base, "--fresh")
    assert code == 0 and path.read_text() == before
    # two identical runs at once: the second is refused while the first holds the run file
    header = json.loads(before.splitlines()[0])
    with RunStore(path, Job(header["kind"], header["settings"])).session():
        code, _, err = _cli(monkeypatch, capsys, *base)
    assert code == 2 and "is busy" in err
    # --out that is a file: refused before any work
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code, _, err = _cli(monkeypatch, capsys, *base[:-2], "--out", blocker)
    assert code == 2 and "is a file" in err


@pytest.mark.cli  # a real process
def test_cli_killed_mid_run_resumes_with_identical_numbers(tiny_files, tmp_path, monkeypatch, capsys):
    """kill -9 of a real `attattr heads importance` process: the finished shards are in its run file,
    and the resumed run ends with the numbers of an uninterrupted one."""
    import os
    import subprocess
    import sys
    import time

    (model_a, _), _ = tiny_files
    csv = tmp_path / "many.csv"
    rows = [
        f'"{t} {w}",{i % 2}' for i, (t, w) in enumerate((t, w) for w in ("again", "so", "too") for t in TEXTS)
    ]
    csv.write_text("text,label\n" + "\n".join(rows * 3) + "\n")  # 63 rows
    args = ["heads", "importance", "--model", model_a, "--data", csv, "--examples", 60, "--first"]
    args += ["--steps", 6, "--batch-size", 2]
    out = tmp_path / "killed"
    launcher = "import sys; from attattr.cli import main; sys.argv = ['attattr', *sys.argv[1:]]; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, *map(str, args), "--out", str(out), "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 180
    records = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            files = list((out / "runs").glob("importance-attattr-*.jsonl")) if (out / "runs").exists() else []
            records = len(files[0].read_text().splitlines()) - 1 if files else 0
            if records >= 4:
                proc.kill()  # SIGKILL: no cleanup of any kind
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -9 and 4 <= records < 60, (proc.returncode, records)
    assert not (out / "importance-attattr.json").exists()
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", out, "--json")
    assert code == 0, err
    code, _, err = _cli(monkeypatch, capsys, *args, "--out", tmp_path / "whole", "--json")
    assert code == 0, err
    resumed = heads.Importance.load(out / "importance-attattr.json")
    whole = heads.Importance.load(tmp_path / "whole" / "importance-attattr.json")
    assert resumed.example_ids == whole.example_ids and len(whole.example_ids) == 60
    assert torch.equal(resumed.per_example, whole.per_example) and torch.equal(resumed.scores, whole.scores)
