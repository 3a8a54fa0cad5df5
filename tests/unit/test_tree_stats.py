"""Tree dataset analyses on a tiny random model: connection gating, faithfulness curves, summaries,
resumable runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attattr
from attattr.analyses.tree import stats as tree_stats
from attattr.analyses.tree.stats import connection_faithfulness, output_of, run_tree_stats
from attattr.core.encoding import encode_batch, model_inputs
from attattr.core.errors import InputError, ResultFileError
from attattr.core.hooks import AttentionHook, ConnectionGate
from tests.tiny import tiny_model, tiny_tokenizer

TEXTS = [
    "the cat sat on the mat",
    "a dog ran down the mat again",
    "the film is very good",
    "not a good film",
    "the dog is bad",
    "it sat and ran",
]


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(2)
    model = tiny_model("bert", layers=3, heads=4)
    # larger weights than the default init: sharper attention and outputs far from 1/2, so that
    # zeroing a few connections moves F by far more than the tolerances below
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model, tiny_tokenizer()


def _forward(model, tokenizer, text, gates=None, head_gates=None):
    enc, _ = encode_batch(tokenizer, [text], max_length=64)
    with AttentionHook(model, head_gates=head_gates, edits=[ConnectionGate(gates)]):
        with torch.no_grad():
            return model(**model_inputs(enc, model)).logits, enc["input_ids"].shape[1]


def test_zeroing_a_whole_head_equals_head_pruning(tiny):
    model, tok = tiny
    logits, n = _forward(model, tok, TEXTS[0])
    gate = torch.ones(1, 4, n, n)
    gate[0, 2] = 0.0
    by_connections, _ = _forward(model, tok, TEXTS[0], {1: gate})
    head_gates = torch.ones(3, 4)
    head_gates[1, 2] = 0.0
    by_head, _ = _forward(model, tok, TEXTS[0], head_gates=head_gates)
    assert torch.allclose(by_connections, by_head, atol=1e-6)
    assert (by_connections - logits).abs().max() > 1e-3


def test_gates_index_query_rows_last_layer_only_the_first_row_matters(tiny):
    """BERT's classifier reads token 0 after the last layer, so in the last layer only the
    connections of query row 0 can change the output: the gates' rows must be query tokens."""
    model, tok = tiny
    logits, n = _forward(model, tok, TEXTS[1])
    other_rows = torch.ones(1, 4, n, n)
    other_rows[0, :, 1:, :] = 0.0
    same, _ = _forward(model, tok, TEXTS[1], {2: other_rows})
    assert torch.allclose(same, logits, atol=1e-6)
    first_row = torch.ones(1, 4, n, n)
    first_row[0, 0, 0, 3] = 0.0
    changed, _ = _forward(model, tok, TEXTS[1], {2: first_row})
    assert (changed - logits).abs().max() > 1e-4


def test_gating_matches_a_hand_made_attention_edit(tiny):
    """Independent path: record A with the plain hook, then inject the edited probabilities of one
    layer through a second forward where that layer's attention is replaced (alpha = 1 rows)."""
    model, tok = tiny
    enc, _ = encode_batch(tok, [TEXTS[2]], max_length=64)
    inputs = model_inputs(enc, model)
    n = enc["input_ids"].shape[1]
    gate = torch.ones(1, 4, n, n)
    gate[0, 1, 2, 0] = 0.0
    gate[0, 3, 4, 4] = 0.0
    with AttentionHook(model, edits=[ConnectionGate({0: gate})]):
        with torch.no_grad():
            gated = model(**inputs).logits

    # the same edit done by hand: a plain function edit of layer 0's probabilities
    def edit(probs, context):
        if context.layer == 0:
            probs = probs.clone()
            probs[0, 1, 2, 0] = 0.0
            probs[0, 3, 4, 4] = 0.0
        return probs

    with AttentionHook(model, edits=[edit]), torch.no_grad():
        by_hand = model(**inputs).logits
    assert torch.allclose(gated, by_hand, atol=1e-6)


def test_faithfulness_curves_against_direct_computation(tiny):
    model, tok = tiny
    attr = attattr.attribute(model, tok, TEXTS[2], steps=4)
    faith = connection_faithfulness(model, tok, attr, ks=[0, 1, 3, 10], seeds=2, salt="x")
    assert faith["k"] == [0, 1, 3, 10]
    assert faith["f0"] == pytest.approx(attr.output_value, abs=1e-5)
    L, H, n, _ = attr.scores.shape
    for method, flat in (("attribution", attr.scores.flatten()), ("attention", attr.attentions.flatten())):
        curve = faith["methods"][method][0]
        assert curve[0] == pytest.approx(faith["f0"])
        for k, value in zip([1, 3, 10], curve[1:], strict=True):
            gate = torch.ones(L * H * n * n)
            gate[torch.topk(flat, k).indices] = 0.0
            gate = gate.view(1, L, H, n, n)
            logits, _ = _forward(model, tok, TEXTS[2], {layer: gate[:, layer] for layer in range(L)})
            assert value == pytest.approx(float(output_of(logits, attr.target, "prob")[0]), abs=1e-5)
    assert len(faith["methods"]["random"]) == 2
    again = connection_faithfulness(model, tok, attr, ks=[0, 1, 3, 10], seeds=2, salt="x")
    assert again == faith  # seeded
    other = connection_faithfulness(model, tok, attr, ks=[0, 1, 3, 10], seeds=2, salt="y")
    assert other["methods"]["random"] != faith["methods"]["random"]


def test_rankings_outside_the_root_row(tiny):
    model, tok = tiny
    attr = attattr.attribute(model, tok, TEXTS[1], steps=2)
    L, H, n, _ = attr.scores.shape
    orders = tree_stats.rankings(attr, seeds=1)
    for name, values in (("attribution", attr.scores), ("attention", attr.attentions)):
        full, nonroot = orders[name][0], orders[f"{name}-nonroot"][0]
        assert len(full) == L * H * n * n and len(nonroot) == L * H * (n - 1) * n
        rows = (nonroot // n) % n
        assert (rows != 0).all()
        # the same order as the full ranking with the root row's entries taken out
        assert nonroot.tolist() == [i for i in full.tolist() if (i // n) % n != 0]
        flat = values.flatten()
        assert (flat[nonroot[:-1]] >= flat[nonroot[1:]]).all()
    with pytest.raises(InputError, match="unknown connection ranking"):
        run_tree_stats(model, tok, TEXTS, methods=["saliency"])


def test_faithfulness_refuses_an_attribution_from_another_tokenizer(tiny):
    model, tok = tiny
    attr = attattr.attribute(model, tok, TEXTS[0], steps=2)
    attr.token_ids = [i + 1 for i in attr.token_ids]
    with pytest.raises(InputError, match="tokens differ"):
        connection_faithfulness(model, tok, attr)


def test_dataset_run_summary_and_resume(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    texts = TEXTS[:4]
    options = dict(threshold=0.3, ks=[0, 1, 2, 5], seeds=2, steps=3, batch_size=2)
    summary = run_tree_stats(model, tok, texts, runs_dir=tmp_path, settings={"model": "tiny"}, **options)
    assert summary["examples"] == len(texts)
    # trees recomputed directly agree with the summary
    trees = [attattr.attribute(model, tok, t, steps=3).tree(0.3) for t in texts]
    assert summary["sizes"] == [t.size for t in trees]
    assert summary["depths"] == [t.depth for t in trees]
    assert sum(summary["size"]["histogram"].values()) == len(texts)
    # receptive field: per layer, the mean |i - j| over every tree's attention edges
    for row in summary["receptive_field"]:
        d = [abs(e.parent - e.child) for t in trees for e in t.attention_edges() if e.layer == row["layer"]]
        assert row["edges"] == len(d)
        if d:
            assert row["mean_distance"] == pytest.approx(np.mean(d))
    curves = summary["faithfulness"]
    assert curves["k"] == [0, 1, 2, 5] and set(curves["methods"]) == set(tree_stats.METHODS)
    for c in curves["methods"].values():
        assert c["mean_drop"][0] == pytest.approx(0.0, abs=1e-9)
        assert len(c["mean_relative_drop"]) == 4
    assert max(abs(x) for c in curves["methods"].values() for x in c["mean_drop"]) > 1e-3  # F moves
    (run_file,) = tmp_path.glob("tree-stats-*.jsonl")
    header, *lines = run_file.read_text().splitlines()
    assert json.loads(header)["kind"] == "tree.stats"
    assert sorted(json.loads(x)["id"] for x in lines) == [str(i) for i in range(len(texts))]

    # resuming does no new work and gives the same summary
    calls = []
    import attattr.core.engine as engine

    real = engine.attribute_many

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "attribute_many", counting)
    again = run_tree_stats(model, tok, texts, runs_dir=tmp_path, settings={"model": "tiny"}, **options)
    assert calls == [] and again == summary
    # an interrupted run: drop the last shard's two records, resume computes only that shard
    run_file.write_text("\n".join([header, *lines[:-2]]) + "\n")
    resumed = run_tree_stats(model, tok, texts, runs_dir=tmp_path, settings={"model": "tiny"}, **options)
    assert calls == [2] and resumed == summary
    # other settings: another run file in the same folder, or refused for a named file
    other = run_tree_stats(
        model, tok, texts[:2], runs_dir=tmp_path, settings={"model": "tiny"}, **{**options, "threshold": 0.5}
    )
    assert other["examples"] == 2 and len(list(tmp_path.glob("tree-stats-*.jsonl"))) == 2
    with pytest.raises(ResultFileError, match=r"other settings \(threshold\)"):
        run_tree_stats(
            model, tok, texts, store=run_file, settings={"model": "tiny"}, **{**options, "threshold": 0.5}
        )


def test_bad_settings_are_input_errors(tiny):
    model, tok = tiny
    with pytest.raises(InputError, match="threshold"):
        run_tree_stats(model, tok, TEXTS, threshold=0)
    with pytest.raises(InputError, match="non-negative"):
        run_tree_stats(model, tok, TEXTS, ks=[-1, 2])
    with pytest.raises(InputError, match="no examples"):
        run_tree_stats(model, tok, [])
    with pytest.raises(InputError, match="parent_choice"):
        run_tree_stats(model, tok, TEXTS, parent_choice="lowest")
    with pytest.raises(InputError, match="batch size"):
        run_tree_stats(model, tok, TEXTS, batch_size=0)
