"""pruning.py: head importance, head selection and physical removal on a tiny CamemBERT student."""
import math

import pytest
import torch

from conftest import BIO_LABELS
from data_loader import collate_windows, encode_sentences, read_examples
from models import count_parameters, encoder_layers, heads_per_layer, load_model, save_model
from pruning import HeadGates, head_importance, heads_to_prune, plan_prune_count, prune_model
from utils import PipelineError

LABEL2ID = {label: i for i, label in enumerate(BIO_LABELS)}


@pytest.fixture
def student(stage1_artifact):
    return load_model(stage1_artifact)


@pytest.fixture(scope="module")
def val_batches(europeana, stage1_artifact):
    _, tokenizer = load_model(stage1_artifact)
    examples = read_examples(europeana / "val.jsonl")[:48]
    windows = encode_sentences(tokenizer, [list(e.tokens) for e in examples], 64,
                               tags=[list(e.tags) for e in examples], label2id=LABEL2ID)
    return [collate_windows(windows[i:i + 16], tokenizer.pad_token_id) for i in range(0, len(windows), 16)]


def logits(model, batches):
    with torch.no_grad():
        return torch.cat([model(b.input_ids, b.attention_mask).logits.flatten(0, 1)[b.attention_mask.flatten().bool()]
                          for b in batches])


def test_a_useless_head_ranks_lowest_and_is_pruned_first(student, val_batches):
    model, _ = student
    value = encoder_layers(model)[1].attention.self.value
    head_size = value.out_features // 4
    with torch.no_grad():  # head 2 of layer 1 now contributes nothing: its context vector is 0
        value.weight[2 * head_size:3 * head_size] = 0
        value.bias[2 * head_size:3 * head_size] = 0
    importance = head_importance(model, val_batches, "cpu", normalize="none")
    assert importance.shape == (3, 4) and importance[1, 2] == 0
    assert (importance.flatten().sort().values[1:] > 0).all()
    assert heads_to_prune(importance, 1, 1) == {1: [2]}
    normalised = head_importance(model, val_batches, "cpu", normalize="l2")
    assert torch.allclose(normalised.norm(dim=1), torch.ones(3)) and normalised[1, 2] == 0


def test_pruned_logits_equal_gated_logits_and_survive_a_save(tmp_path, student, val_batches):
    model, tokenizer = student
    heads = {0: [1, 3], 2: [0]}
    gates = torch.ones(3, 4)
    for layer, layer_heads in heads.items():
        gates[layer, layer_heads] = 0
    with HeadGates(model, gates):
        gated = logits(model, val_batches)
    ungated = logits(model, val_batches)
    from models import remove_attention_heads
    remove_attention_heads(model, heads)
    pruned = logits(model, val_batches)
    assert torch.allclose(pruned, gated, atol=1e-5) and not torch.allclose(pruned, ungated, atol=1e-3)
    save_model(model, tokenizer, tmp_path / "pruned")
    reloaded, _ = load_model(tmp_path / "pruned")
    assert torch.allclose(logits(reloaded, val_batches), pruned, atol=1e-6)


def test_parameters_drop_by_exactly_the_removed_weights(student):
    model, _ = student
    config = model.backbone.config
    hidden, head_size = config.hidden_size, config.hidden_size // config.num_attention_heads
    # per head: query, key and value rows (weights and biases) and output-projection columns
    per_head = 3 * (hidden * head_size + head_size) + head_size * hidden
    before = count_parameters(model)
    from models import remove_attention_heads
    remove_attention_heads(model, {0: [0], 1: [1, 2], 2: [3]})
    assert before - count_parameters(model) == 4 * per_head == 4 * 4144


def test_rate_zero_changes_nothing(student, val_batches):
    model, _ = student
    before = logits(model, val_batches)
    steps = prune_model(model, val_batches, rate=0.0, log=lambda *a: None)
    assert steps[0].pruned == {} and heads_per_layer(model) == [4, 4, 4]
    assert torch.equal(logits(model, val_batches), before)


def test_two_step_pruning_rescores_between_steps(student, val_batches):
    model, _ = student
    steps = prune_model(model, val_batches, rate=0.5, steps=2, log=lambda *a: None)
    assert [sum(map(len, s.pruned.values())) for s in steps] == [3, 3]
    first_pruned = [(l, h) for l, hs in steps[0].pruned.items() for h in hs]
    assert all(math.isnan(steps[1].importance[l, h]) for l, h in first_pruned)
    assert int(torch.isnan(steps[1].importance).sum()) == 3
    assert sum(heads_per_layer(model)) == 6 and min(heads_per_layer(model)) >= 1


def test_pruning_a_pruned_model_uses_original_indices(tmp_path, student, val_batches):
    model, tokenizer = student
    prune_model(model, val_batches, rate=0.25, log=lambda *a: None)
    first = {l: set(h) for l, h in model.info.pruned_heads.items()}
    save_model(model, tokenizer, tmp_path / "once")
    again, _ = load_model(tmp_path / "once")
    steps = prune_model(again, val_batches, rate=0.25, log=lambda *a: None)
    second = {l: set(h) for l, h in steps[0].pruned.items()}
    assert sum(map(len, second.values())) == round(0.25 * 9)
    assert all(not (first.get(l, set()) & heads) for l, heads in second.items())  # never a head twice
    merged = {l: first.get(l, set()) | second.get(l, set()) for l in set(first) | set(second)}
    assert {l: set(h) for l, h in again.info.pruned_heads.items()} == merged
    assert sum(heads_per_layer(again)) == 12 - 3 - 2


def test_minimum_heads_per_layer_is_kept():
    importance = torch.tensor([[0.1, 0.2, 0.3, 0.4], [5.0, 6.0, 7.0, 8.0]])
    assert heads_to_prune(importance, 3, 2) == {0: [0, 1], 1: [0]}
    assert heads_to_prune(importance, 3, 1) == {0: [0, 1, 2]}


@pytest.mark.parametrize("rate, minimum, message", [
    (1.0, 1, r"outside \[0, 1\)"),
    (-0.1, 1, r"outside \[0, 1\)"),
    (0.75, 2, "allows at most 6"),
])
def test_impossible_rates_are_explained(rate, minimum, message):
    with pytest.raises(PipelineError, match=message):
        plan_prune_count([4, 4, 4], rate, minimum)
    assert plan_prune_count([4, 4, 4], 0.25, 1) == 3


# ---------------------------------------------------------------------------
# FFN neurons

def test_gating_neurons_to_zero_equals_removing_them(tmp_path, student, val_batches):
    from models import neurons_per_layer, remove_ffn_neurons
    from pruning import NeuronGates
    model, tokenizer = student
    neurons = {0: [3, 17, 100], 2: list(range(0, 128, 2))}
    gates = torch.ones(3, 128)
    for layer, removed in neurons.items():
        gates[layer, removed] = 0
    with NeuronGates(model, gates):
        gated = logits(model, val_batches)
    before = logits(model, val_batches)
    remove_ffn_neurons(model, neurons)
    assert neurons_per_layer(model) == [125, 128, 64]
    removed = logits(model, val_batches)
    assert torch.allclose(removed, gated, atol=1e-5) and not torch.allclose(removed, before, atol=1e-3)
    save_model(model, tokenizer, tmp_path / "pruned")
    reloaded, _ = load_model(tmp_path / "pruned")
    assert neurons_per_layer(reloaded) == [125, 128, 64] and torch.allclose(logits(reloaded, val_batches), removed)
    with pytest.raises(PipelineError, match="already pruned"):
        remove_ffn_neurons(reloaded, {0: [17]})
    with pytest.raises(PipelineError, match="cannot remove all"):
        remove_ffn_neurons(reloaded, {2: list(range(1, 128, 2))})
    with pytest.raises(PipelineError, match="listed twice"):
        remove_ffn_neurons(reloaded, {1: [5, 5]})
    import json
    assert json.loads((tmp_path / "pruned" / "config.json").read_text())["ner_pipeline"]["format_version"] == 2


def test_ffn_rate_zero_leaves_heads_scores_and_model_as_they_were(student, val_batches):
    from pruning import importance_scores
    model, _ = student
    alone = head_importance(model, val_batches, "cpu")
    heads, neurons = importance_scores(model, val_batches, "cpu", neurons=True)
    assert torch.allclose(heads, alone, atol=1e-6, equal_nan=True) and neurons.shape == (3, 128)
    assert torch.allclose(neurons.norm(dim=1), torch.ones(3))
    before = logits(model, val_batches)
    steps = prune_model(model, val_batches, rate=0.0, ffn_rate=0.0, log=lambda *a: None)
    assert steps[0].neuron_importance is None and steps[0].pruned_neurons == {}
    assert torch.equal(logits(model, val_batches), before)


def test_neurons_are_pruned_with_the_heads_in_rounds_above_the_floor(student, val_batches):
    from models import neurons_per_layer
    model, _ = student
    steps = prune_model(model, val_batches, rate=0.25, steps=2, ffn_rate=0.3, min_ffn_neurons_per_layer=80,
                        log=lambda *a: None)
    assert [sum(map(len, s.pruned_neurons.values())) for s in steps] == [58, 57]   # round(0.3 * 384) = 115
    assert [sum(map(len, s.pruned.values())) for s in steps] == [2, 1]
    assert sum(neurons_per_layer(model)) == 384 - 115 and min(neurons_per_layer(model)) >= 80
    first = [(l, n) for l, ns in steps[0].pruned_neurons.items() for n in ns]
    assert all(math.isnan(steps[1].neuron_importance[l, n]) for l, n in first)
    assert int(torch.isnan(steps[1].neuron_importance).sum()) == 58


def test_neuron_counts_are_checked_before_any_work():
    from pruning import plan_neuron_count
    assert plan_neuron_count([128, 128], 0.25, 64) == 64
    assert plan_neuron_count([128, 128], 0.0, 500) == 0            # the floor only matters when pruning
    with pytest.raises(PipelineError, match=r"pruning.min_ffn_neurons_per_layer=200 is larger than layer 0"):
        plan_neuron_count([128, 128], 0.1, 200)
    with pytest.raises(PipelineError, match=r"FFN pruning rate \(pruning.ffn_rate, --ffn-rate\) 1.5 is outside"):
        plan_neuron_count([128, 128], 1.5, 1)
    with pytest.raises(PipelineError, match="allows at most 64"):
        plan_neuron_count([128, 128], 0.6, 96)
