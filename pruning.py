"""Attention-head and FFN-neuron importance (Michel et al. 2019, arXiv 1905.10650) and selection.

A gate g[l, h] multiplies each head's context vector just before the attention output
projection (a forward pre-hook on `attention.output.dense`; transformers 5 has no
`head_mask`). With every gate at 1 the model is unchanged, and the importance of a head is
the accumulated |dLoss/dg| over the data: the loss is the student's own supervised loss (CE
and CRF on gold labels). Scores are normalised per layer, ranked globally, and the lowest
heads are removed physically by `models.remove_attention_heads`.

The feed-forward neurons are scored the same way, in the same backward passes: a gate on each
neuron's activation (a forward hook on each layer's `intermediate` module), |dLoss/dgate|
accumulated, normalised per layer, ranked globally, with a floor per layer; they are removed
by `models.remove_ffn_neurons`.

Heads and neurons are always indexed by their ORIGINAL position in the layer, so a pruned
model can be scored and pruned again.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from data_loader import Batch
from decoding import word_level_emissions
from losses import combined_loss
from config import LossWeights
from models import (NERModel, encoder_layers, heads_per_layer, neurons_per_layer, remaining_heads, remaining_neurons,
                    remove_attention_heads, remove_ffn_neurons)
from utils import PipelineError


class HeadGates:
    """Multiply each head's context vector by gates[l, h] (original indices) while active.

    `gates` is an (L, H) tensor; give it requires_grad to measure importance, or zeros at
    some heads to switch them off.
    """

    def __init__(self, model: NERModel, gates: torch.Tensor):
        self.model, self.gates, self.handles = model, gates, []

    def __enter__(self) -> "HeadGates":
        for layer, heads in zip(encoder_layers(self.model), remaining_heads(self.model)):
            index = torch.tensor(heads)
            head_size = layer.attention.self.attention_head_size

            def gate(module, args, index=index, layer_id=len(self.handles), head_size=head_size):
                context = args[0]                                              # (B, T, H_l * d)
                shape = context.shape
                g = self.gates[layer_id, index.to(self.gates.device)]          # (H_l,)
                gated = context.view(*shape[:-1], -1, head_size) * g.view(-1, 1).to(context.dtype)
                return (gated.view(shape),) + tuple(args[1:])
            self.handles.append(layer.attention.output.dense.register_forward_pre_hook(gate))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class NeuronGates:
    """Multiply each feed-forward neuron's activation by gates[l, n] (original indices) while active."""

    def __init__(self, model: NERModel, gates: torch.Tensor):
        self.model, self.gates, self.handles = model, gates, []

    def __enter__(self) -> "NeuronGates":
        for layer_id, (layer, neurons) in enumerate(zip(encoder_layers(self.model), remaining_neurons(self.model))):
            index = torch.tensor(neurons)

            def gate(module, args, output, index=index, layer_id=layer_id):
                g = self.gates[layer_id, index.to(self.gates.device)]          # (I_l,)
                return output * g.to(output.dtype)                             # (B, T, I_l)
            self.handles.append(layer.intermediate.register_forward_hook(gate))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def importance_scores(model: NERModel, batches: list[Batch], device, autocast=nullcontext, normalize: str = "l2",
                      neurons: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Importance of every head, (L, H), and with `neurons` of every FFN neuron, (L, I), in
    original indices, NaN where already pruned; both from the same backward passes.

    importance = sum over batches of |dLoss/dgate|, then normalised per layer (L2) when
    `normalize` is "l2".
    """
    layers = encoder_layers(model)
    gates = [torch.ones(len(layers), model.config.num_attention_heads, device=device, requires_grad=True)]
    if neurons:
        gates.append(torch.ones(len(layers), model.config.intermediate_size, device=device, requires_grad=True))
    totals = [torch.zeros_like(g, requires_grad=False) for g in gates]
    weights = LossWeights(ce=1.0, kd=0.0, hidden=0.0, crf=1.0 if model.crf is not None else 0.0)
    was_training = model.training
    model.eval()                                  # no dropout: scores depend on the data only
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)                   # gradients are needed for the gates alone
    try:
        with HeadGates(model, gates[0]), (NeuronGates(model, gates[1]) if neurons else nullcontext()):
            for batch in batches:
                batch = batch.to(device)
                with autocast():
                    logits = model(batch.input_ids, batch.attention_mask).logits
                    emissions = word_level_emissions(logits, batch.word_starts)
                    loss, _ = combined_loss(emissions, None, None, batch.word_labels, batch.word_mask,
                                            batch.attention_mask, model.crf, weights, None, 1.0)
                for total, gradient in zip(totals, torch.autograd.grad(loss, gates)):
                    total += gradient.abs().float()
    except torch.cuda.OutOfMemoryError as error:
        raise PipelineError(f"CUDA out of memory while scoring heads on batches of {batches[0].input_ids.size(0)} "
                            "windows. Lower pruning.batch_size.") from error
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    heads = _normalised(totals[0].cpu(), remaining_heads(model), normalize)
    return heads, (_normalised(totals[1].cpu(), remaining_neurons(model), normalize) if neurons else None)


def head_importance(model: NERModel, batches: list[Batch], device, autocast=nullcontext,
                    normalize: str = "l2") -> torch.Tensor:
    """Importance of every head, (L, H) in original indices, NaN where a head is already pruned."""
    return importance_scores(model, batches, device, autocast, normalize)[0]


def _normalised(importance: torch.Tensor, remaining: list[list[int]], normalize: str) -> torch.Tensor:
    alive = torch.zeros_like(importance, dtype=torch.bool)
    for l, units in enumerate(remaining):
        alive[l, units] = True
    if normalize == "l2":
        norms = (importance * alive).norm(dim=1, keepdim=True).clamp_min(1e-20)
        importance = importance / norms
    return importance.masked_fill(~alive, float("nan"))


def heads_to_prune(importance: torch.Tensor, count: int, min_heads_per_layer: int) -> dict[int, list[int]]:
    """The `count` least important heads (ties: lower layer, then lower head first), never
    leaving a layer with fewer than `min_heads_per_layer` heads."""
    return _least_important(importance, count, min_heads_per_layer, "pruning.min_heads_per_layer")


def neurons_to_prune(importance: torch.Tensor, count: int, min_neurons_per_layer: int) -> dict[int, list[int]]:
    """The `count` least important FFN neurons, never leaving a layer with fewer than
    `min_neurons_per_layer` of them."""
    return _least_important(importance, count, min_neurons_per_layer, "pruning.min_ffn_neurons_per_layer")


def _least_important(importance: torch.Tensor, count: int, minimum: int, key: str) -> dict[int, list[int]]:
    """(L, N) scores, NaN where already removed -> {layer: [original indices]} of the lowest `count`."""
    alive = ~torch.isnan(importance)
    left = alive.sum(dim=1).tolist()
    candidates = sorted((float(importance[l, n]), l, n) for l, n in alive.nonzero().tolist())
    chosen: dict[int, list[int]] = {}
    for _, l, n in candidates:
        if count == 0:
            break
        if left[l] > minimum:
            chosen.setdefault(l, []).append(n)
            left[l] -= 1
            count -= 1
    if count:
        raise PipelineError(f"cannot remove that many while keeping {key}={minimum} in each layer ({count} short).")
    return {l: sorted(n) for l, n in sorted(chosen.items())}


def plan_prune_count(heads_per_layer: list[int], rate: float, min_heads_per_layer: int) -> int:
    """How many heads `rate` removes from those the model has now; checks it is possible."""
    return _plan_count(heads_per_layer, rate, min_heads_per_layer, "heads", "pruning rate",
                       "pruning.min_heads_per_layer")


def plan_neuron_count(neurons_per_layer: list[int], rate: float, min_neurons_per_layer: int) -> int:
    """How many FFN neurons `rate` removes from those the model has now; checks it is possible."""
    if rate > 0:
        for layer, count in enumerate(neurons_per_layer):
            if min_neurons_per_layer > count:
                raise PipelineError(f"pruning.min_ffn_neurons_per_layer={min_neurons_per_layer} is larger than layer "
                                    f"{layer}'s {count} FFN neurons; set it to at most {min(neurons_per_layer)}.")
    return _plan_count(neurons_per_layer, rate, min_neurons_per_layer, "FFN neurons",
                       "FFN pruning rate (pruning.ffn_rate, --ffn-rate)", "pruning.min_ffn_neurons_per_layer")


def _plan_count(units_per_layer: list[int], rate: float, minimum: int, what: str, rate_name: str,
                minimum_key: str) -> int:
    if not 0 <= rate < 1:
        raise PipelineError(f"{rate_name} {rate} is outside [0, 1): give the fraction of {what} to remove, e.g. 0.25.")
    total = sum(units_per_layer)
    count = round(rate * total)
    removable = sum(max(0, n - minimum) for n in units_per_layer)
    if count > removable:
        raise PipelineError(
            f"{rate_name} {rate} removes {count} of the {total} {what}, but keeping "
            f"{minimum_key}={minimum} in each of the {len(units_per_layer)} layers "
            f"allows at most {removable} ({removable / total:.3f} of them). Lower the rate or the minimum.")
    return count


@dataclass
class PruningStep:
    importance: torch.Tensor                  # (L, H) head scores used for this step, NaN = already pruned
    pruned: dict[int, list[int]]              # heads removed in this step (original indices)
    neuron_importance: torch.Tensor | None = None  # (L, I) FFN neuron scores, when neurons are pruned
    pruned_neurons: dict[int, list[int]] = field(default_factory=dict)


def prune_model(model: NERModel, batches: list[Batch], rate: float, min_heads_per_layer: int = 1,
                steps: int = 1, normalize: str = "l2", device="cpu", autocast=nullcontext,
                log=print, ffn_rate: float = 0.0, min_ffn_neurons_per_layer: int = 64) -> list[PruningStep]:
    """Remove round(rate x heads) heads, and round(ffn_rate x neurons) FFN neurons, in `steps`
    rounds, re-scoring both (in the same passes) before each."""
    total = plan_prune_count(heads_per_layer(model), rate, min_heads_per_layer)
    total_neurons = plan_neuron_count(neurons_per_layer(model), ffn_rate, min_ffn_neurons_per_layer)
    history, done, done_neurons = [], 0, 0
    for step in range(1, steps + 1):
        target, target_neurons = round(total * step / steps), round(total_neurons * step / steps)
        importance, neuron_importance = importance_scores(model, batches, device, autocast, normalize,
                                                          neurons=total_neurons > 0)
        chosen = heads_to_prune(importance, target - done, min_heads_per_layer)
        remove_attention_heads(model, chosen)
        chosen_neurons = {}
        if neuron_importance is not None:
            chosen_neurons = neurons_to_prune(neuron_importance, target_neurons - done_neurons,
                                              min_ffn_neurons_per_layer)
            remove_ffn_neurons(model, chosen_neurons)
        done, done_neurons = target, target_neurons
        history.append(PruningStep(importance, chosen, neuron_importance, chosen_neurons))
        log(f"step {step}/{steps}: removed {sum(len(h) for h in chosen.values())} heads "
            f"{ {l: h for l, h in chosen.items()} }; heads per layer now {heads_per_layer(model)}"
            + (f"; FFN neurons per layer now {neurons_per_layer(model)}" if chosen_neurons else ""))
    return history


def heads_record(model: NERModel, steps: list[PruningStep], pruning, heads_before: list[int]) -> dict:
    """heads_pruned_mask.json: the settings, which heads are gone (original indices), the keep
    mask, and the scores of each round."""
    num_heads, kept = model.config.num_attention_heads, remaining_heads(model)
    return {
        "rate": pruning.rate,
        "min_heads_per_layer": pruning.min_heads_per_layer,
        "steps": pruning.steps,
        "normalize": pruning.normalize,
        "total_heads": len(kept) * num_heads,
        "heads_before": sum(heads_before),
        "pruned_this_run": sum(len(h) for step in steps for h in step.pruned.values()),
        "pruned_total": len(kept) * num_heads - sum(map(len, kept)),
        "pruned_heads": {str(l): list(h) for l, h in sorted(model.info.pruned_heads.items())},
        "keep_mask": [[int(h in heads) for h in range(num_heads)] for heads in kept],
        "importance": [[[None if v != v else round(v, 6) for v in row] for row in step.importance.tolist()]
                       for step in steps],
        "pruned_per_step": [{str(l): h for l, h in step.pruned.items()} for step in steps],
    }


def neurons_record(model: NERModel, steps: list[PruningStep], pruning, neurons_before: list[int]) -> dict:
    """ffn_pruned_mask.json: the settings, neurons per layer, which are gone (original indices),
    and per round a summary of the scores (10 x 3072 floats a round would say little more)."""
    def summary(importance: torch.Tensor, pruned: dict[int, list[int]]) -> list[dict]:
        rows = []
        for l, row in enumerate(importance):
            alive = row[~torch.isnan(row)]
            removed = row[pruned.get(l, [])]
            rows.append({"min": round(float(alive.min()), 6), "median": round(float(alive.median()), 6),
                         "max": round(float(alive.max()), 6),
                         "highest_removed": round(float(removed.max()), 6) if len(removed) else None})
        return rows
    return {
        "ffn_rate": pruning.ffn_rate,
        "min_ffn_neurons_per_layer": pruning.min_ffn_neurons_per_layer,
        "steps": pruning.steps,
        "normalize": pruning.normalize,
        "intermediate_size": model.config.intermediate_size,
        "neurons_before": neurons_before,
        "neurons_after": neurons_per_layer(model),
        "pruned_this_run": sum(len(n) for step in steps for n in step.pruned_neurons.values()),
        "pruned_total": sum(map(len, model.info.pruned_neurons.values())),
        "pruned_neurons": {str(l): list(n) for l, n in sorted(model.info.pruned_neurons.items())},
        "importance_per_layer": [summary(step.neuron_importance, step.pruned_neurons) for step in steps
                                 if step.neuron_importance is not None],
    }
