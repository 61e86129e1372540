"""Attention-head importance (Michel et al. 2019, arXiv 1905.10650) and head selection.

A gate g[l, h] multiplies each head's context vector just before the attention output
projection (a forward pre-hook on `attention.output.dense`; transformers 5 has no
`head_mask`). With every gate at 1 the model is unchanged, and the importance of a head is
the accumulated |dLoss/dg| over the data: the loss is the student's own supervised loss (CE
and CRF on gold labels). Scores are normalised per layer, ranked globally, and the lowest
heads are removed physically by `models.remove_attention_heads`.

Heads are always indexed by their ORIGINAL position in the layer, so a pruned model can be
scored and pruned again.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from data_loader import Batch
from decoding import word_level_emissions
from losses import combined_loss
from models import NERModel, encoder_layers, heads_per_layer, remaining_heads, remove_attention_heads
from config import LossWeights
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


def head_importance(model: NERModel, batches: list[Batch], device, autocast=nullcontext,
                    normalize: str = "l2") -> torch.Tensor:
    """Importance of every head, (L, H) in original indices, NaN where a head is already pruned.

    importance[l, h] = sum over batches of |dLoss/dg[l, h]|, then normalised per layer (L2)
    when `normalize` is "l2".
    """
    layers = encoder_layers(model)
    gates = torch.ones(len(layers), model.backbone.config.num_attention_heads, device=device, requires_grad=True)
    importance = torch.zeros_like(gates, requires_grad=False)
    weights = LossWeights(ce=1.0, kd=0.0, hidden=0.0, crf=1.0 if model.crf is not None else 0.0)
    was_training = model.training
    model.eval()                                  # no dropout: scores depend on the data only
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)                   # gradients are needed for the gates alone
    try:
        with HeadGates(model, gates):
            for batch in batches:
                batch = batch.to(device)
                with autocast():
                    logits = model(batch.input_ids, batch.attention_mask).logits
                    emissions = word_level_emissions(logits, batch.word_starts)
                    loss, _ = combined_loss(emissions, None, None, batch.word_labels, batch.word_mask,
                                            batch.attention_mask, model.crf, weights, None, 1.0)
                (gradient,) = torch.autograd.grad(loss, gates)
                importance += gradient.abs().float()
    except torch.cuda.OutOfMemoryError as error:
        raise PipelineError(f"CUDA out of memory while scoring heads on batches of {batches[0].input_ids.size(0)} "
                            "windows. Lower pruning.batch_size.") from error
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)
    importance = importance.cpu()
    alive = torch.zeros_like(importance, dtype=torch.bool)
    for l, heads in enumerate(remaining_heads(model)):
        alive[l, heads] = True
    if normalize == "l2":
        norms = (importance * alive).norm(dim=1, keepdim=True).clamp_min(1e-20)
        importance = importance / norms
    return importance.masked_fill(~alive, float("nan"))


def heads_to_prune(importance: torch.Tensor, count: int, min_heads_per_layer: int) -> dict[int, list[int]]:
    """The `count` least important heads (ties: lower layer, then lower head first), never
    leaving a layer with fewer than `min_heads_per_layer` heads."""
    alive = ~torch.isnan(importance)
    left = alive.sum(dim=1).tolist()
    candidates = sorted((float(importance[l, h]), l, h) for l, h in alive.nonzero().tolist())
    chosen: dict[int, list[int]] = {}
    for _, l, h in candidates:
        if count == 0:
            break
        if left[l] > min_heads_per_layer:
            chosen.setdefault(l, []).append(h)
            left[l] -= 1
            count -= 1
    if count:
        raise PipelineError(f"cannot remove that many heads while keeping pruning.min_heads_per_layer="
                            f"{min_heads_per_layer} in each layer ({count} short).")
    return {l: sorted(h) for l, h in sorted(chosen.items())}


def plan_prune_count(heads_per_layer: list[int], rate: float, min_heads_per_layer: int) -> int:
    """How many heads `rate` removes from those the model has now; checks it is possible."""
    if not 0 <= rate < 1:
        raise PipelineError(f"pruning rate {rate} is outside [0, 1): give the fraction of heads to remove, "
                            "e.g. 0.25.")
    total = sum(heads_per_layer)
    count = round(rate * total)
    removable = sum(max(0, h - min_heads_per_layer) for h in heads_per_layer)
    if count > removable:
        raise PipelineError(
            f"pruning rate {rate} removes {count} of the {total} heads, but keeping "
            f"pruning.min_heads_per_layer={min_heads_per_layer} in each of the {len(heads_per_layer)} layers "
            f"allows at most {removable} ({removable / total:.3f} of them). Lower the rate or the minimum.")
    return count


@dataclass
class PruningStep:
    importance: torch.Tensor            # (L, H) scores used for this step, NaN = already pruned
    pruned: dict[int, list[int]]        # heads removed in this step (original indices)


def prune_model(model: NERModel, batches: list[Batch], rate: float, min_heads_per_layer: int = 1,
                steps: int = 1, normalize: str = "l2", device="cpu", autocast=nullcontext,
                log=print) -> list[PruningStep]:
    """Remove round(rate x heads) heads in `steps` rounds, re-scoring the heads before each."""
    total = plan_prune_count(heads_per_layer(model), rate, min_heads_per_layer)
    history, done = [], 0
    for step in range(1, steps + 1):
        target = round(total * step / steps)
        importance = head_importance(model, batches, device, autocast, normalize)
        chosen = heads_to_prune(importance, target - done, min_heads_per_layer)
        remove_attention_heads(model, chosen)
        done = target
        history.append(PruningStep(importance, chosen))
        log(f"step {step}/{steps}: removed {sum(len(h) for h in chosen.values())} heads "
            f"{ {l: h for l, h in chosen.items()} }; heads per layer now {heads_per_layer(model)}")
    return history
