"""Distillation losses, each a pure function of student output, teacher output and a mask.

All losses work on words (the first subword of each word, packed left: (B, W, C)),
except the hidden-state loss, which covers every real token. The total is

    loss = w_ce * CE + w_kd * KD + w_hidden * HIDDEN + w_crf * CRF_NLL

and a term whose weight is 0 is not computed at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from decoding import map_entity_types
from models import LabelProjection


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is set, computed on the device (no data-dependent shapes,
    so no host-device synchronisation in the training step)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def cross_entropy(emissions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE over real words. emissions (B, W, C), labels (B, W), mask (B, W) bool."""
    per_word = F.cross_entropy(emissions.float().flatten(0, 1), labels.flatten(), reduction="none")
    return _masked_mean(per_word.view_as(labels), mask)


@dataclass(frozen=True)
class KDMapping:
    """Tensors that put teacher and student distributions in one space (see LabelProjection)."""
    teacher_order: torch.Tensor | None   # (C_s,) teacher column for each student label
    teacher_types: torch.Tensor | None   # (C_t, K) log-membership: 0 if label in type, -inf if not
    student_types: torch.Tensor | None   # (C_s, K)
    known_labels: torch.Tensor           # (C_s,) bool: gold label whose type the teacher knows

    @classmethod
    def from_projection(cls, projection: LabelProjection, device=None) -> "KDMapping":
        known = torch.tensor([projection.types[t] not in projection.unknown_to_teacher
                              for t in projection.student_type_ids], device=device)
        if projection.full_label:
            return cls(torch.tensor(projection.teacher_order, device=device), None, None, known)

        def membership(type_ids):
            member = F.one_hot(torch.tensor(type_ids), len(projection.types)).bool()
            return torch.zeros(member.shape).masked_fill(~member, float("-inf")).to(device)
        return cls(None, membership(projection.teacher_type_ids),
                   membership(projection.student_type_ids), known)

    def to(self, device) -> "KDMapping":
        move = lambda t: None if t is None else t.to(device)
        return KDMapping(move(self.teacher_order), move(self.teacher_types),
                         move(self.student_types), move(self.known_labels))


def kd_loss(emissions_s: torch.Tensor, emissions_t: torch.Tensor, mask: torch.Tensor,
            mapping: KDMapping, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at temperature T, scaled by T², mean over masked words.

    emissions_s (B, W, C_s), emissions_t (B, W, C_t), mask (B, W). With identical label
    sets the full distributions are compared; otherwise probabilities are summed per
    entity type first (type-level KD).
    """
    log_p_s = F.log_softmax(emissions_s.float() / temperature, dim=-1)   # (B, W, C_s)
    log_p_t = F.log_softmax(emissions_t.float() / temperature, dim=-1)   # (B, W, C_t)
    if mapping.teacher_order is not None:
        log_q_s, log_q_t = log_p_s, log_p_t[..., mapping.teacher_order]
    else:
        log_q_s = torch.logsumexp(log_p_s.unsqueeze(-1) + mapping.student_types, dim=-2)  # (B, W, K)
        log_q_t = torch.logsumexp(log_p_t.unsqueeze(-1) + mapping.teacher_types, dim=-2)  # (B, W, K)
    q_t = log_q_t.exp()
    # 0 * log 0 = 0: types the teacher gives no mass contribute nothing
    terms = torch.where(q_t > 0, q_t * (log_q_t - log_q_s), torch.zeros_like(q_t))
    return _masked_mean(terms.sum(dim=-1), mask) * temperature ** 2


def hidden_state_loss(hidden_s: list[torch.Tensor], hidden_t: list[torch.Tensor],
                      attention_mask: torch.Tensor) -> torch.Tensor:
    """Patient-KD loss on every real token: ||s/|s| - t/|t|||² per token, mean over tokens
    and layer pairs. hidden_s[i] and hidden_t[i] are (B, T, H) for the i-th mapped pair."""
    per_layer = []
    for h_s, h_t in zip(hidden_s, hidden_t):
        diff = F.normalize(h_s.float(), dim=-1) - F.normalize(h_t.float(), dim=-1)   # (B, T, H)
        per_layer.append(_masked_mean(diff.pow(2).sum(dim=-1), attention_mask))
    return torch.stack(per_layer).mean()


def crf_nll(crf, emissions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CRF negative log-likelihood per word over word-level emissions, with the scores of a
    pytorch-crf `CRF`: the value of `-crf(emissions, labels, mask, reduction="token_mean")`.

    Computed here because pytorch-crf checks its mask on the host, which would synchronise
    the GPU at every step. The mask must be contiguous from the first word (word packing).
    emissions (B, W, C), labels (B, W), mask (B, W) bool.
    """
    with torch.autocast(device_type=emissions.device.type, enabled=False):
        emissions = emissions.float()
        start, transitions, end = crf.start_transitions, crf.transitions, crf.end_transitions
        real = mask.to(emissions.dtype)
        emitted = emissions.gather(2, labels.unsqueeze(-1)).squeeze(-1)                  # (B, W)
        moves = transitions[labels[:, :-1], labels[:, 1:]]                               # (B, W-1)
        last = labels.gather(1, (mask.sum(dim=1, keepdim=True) - 1).clamp_min(0)).squeeze(1)
        gold = (start[labels[:, 0]] + emitted[:, 0] + ((moves + emitted[:, 1:]) * real[:, 1:]).sum(dim=1)
                + end[last])                                                             # (B,)
        return (_crf_log_partition(crf, emissions, mask) - gold).sum() / real.sum().clamp_min(1)


def partial_crf_nll(crf, emissions: torch.Tensor, labels: torch.Tensor, known: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """CRF negative log-likelihood of every path that agrees with `labels` where `known`, free
    elsewhere (a partially labelled sequence): log Z - log Z(agreeing paths), per known word.
    emissions (B, W, C), labels (B, W), known and mask (B, W) bool."""
    with torch.autocast(device_type=emissions.device.type, enabled=False):
        emissions = emissions.float()
        allowed = torch.nn.functional.one_hot(labels, emissions.size(-1)).bool() | ~known.unsqueeze(-1)
        agreeing = emissions.masked_fill(~allowed, -1e4)
        per_row = _crf_log_partition(crf, emissions, mask) - _crf_log_partition(crf, agreeing, mask)
        return per_row.sum() / (known & mask).sum().clamp_min(1)


def _crf_log_partition(crf, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of the sum over all label paths of exp(score), per row (forward algorithm): (B,)."""
    transitions = crf.transitions
    alpha = crf.start_transitions + emissions[:, 0]                                       # (B, C)
    for t in range(1, emissions.size(1)):
        step = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
        alpha = torch.where(mask[:, t].unsqueeze(1), step, alpha)
    return torch.logsumexp(alpha + crf.end_transitions, dim=1)


def pseudo_label_targets(teacher_emissions: torch.Tensor, word_mask: torch.Tensor, teacher_labels: tuple[str, ...],
                         student_label2id: dict[str, int], type_map: dict[str, str],
                         threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's tags as student BIO label ids, and where they are kept: (labels, known), (B, W).

    Each word takes the teacher's most probable label; types are projected as for KD (a type the
    student lacks, MISC say, becomes O), then IO becomes BIO by the rule evaluation uses (a new
    entity wherever the type changes). A word whose teacher probability is under `threshold` is
    masked (known = False): the CRF leaves it free.
    """
    probabilities = teacher_emissions.float().softmax(dim=-1)
    confidence, best = probabilities.max(dim=-1)
    lengths = word_mask.sum(dim=1).tolist()
    labels = torch.zeros_like(best)
    for row, (ids, n) in enumerate(zip(best.tolist(), lengths)):
        tags = map_entity_types([teacher_labels[i] for i in ids[:n]], type_map)
        labels[row, :n] = torch.tensor([student_label2id[t] for t in tags], dtype=labels.dtype)
    return labels, word_mask & (confidence >= threshold)


@dataclass(frozen=True)
class TeacherTargets:
    """What the frozen teacher contributes to a batch (computed under inference mode)."""
    emissions: torch.Tensor | None      # (B, W, C_t) word-level logits; None when KD is off
    hidden: list[torch.Tensor] | None   # (B, T, H) per student layer, from the mapped teacher layer


def combined_loss(emissions_s: torch.Tensor, hidden_s: list[torch.Tensor] | None,
                  targets: TeacherTargets | None, word_labels: torch.Tensor, word_mask: torch.Tensor,
                  attention_mask: torch.Tensor, crf, weights, mapping: KDMapping | None,
                  temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the enabled losses, and each unweighted term by name (for logging).

    `weights` has ce, kd, hidden and crf; a zero weight skips the term.
    """
    terms: dict[str, torch.Tensor] = {}
    if weights.ce > 0:
        terms["ce"] = cross_entropy(emissions_s, word_labels, word_mask)
    if weights.kd > 0:
        kd_mask = word_mask & mapping.known_labels[word_labels]
        terms["kd"] = kd_loss(emissions_s, targets.emissions, kd_mask, mapping, temperature)
    if weights.hidden > 0:
        terms["hidden"] = hidden_state_loss(hidden_s, targets.hidden, attention_mask)
    if weights.crf > 0 and crf is not None:
        terms["crf"] = crf_nll(crf, emissions_s, word_labels, word_mask)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms
