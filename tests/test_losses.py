"""Tests for losses.py against values computed by hand (CPU, pure tensors, well under a second).

float32 results are compared with a relative tolerance of 1e-5 (a few float32 ulps): an absolute
1e-6 on a loss of about 2 failed on an AVX-512 CPU, whose kernels round differently."""

import itertools
import math

import pytest
import torch
from torchcrf import CRF

from losses import (KDMapping, TeacherTargets, combined_loss, crf_nll, cross_entropy,
                    hidden_state_loss, kd_loss)
from models import project_labels
from config import LossWeights

BIO = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TEACHER_IO = ("O", "I-LOC", "I-PER", "I-MISC", "I-ORG")  # the real teacher's label shape


def softmax(values, temperature=1.0):
    """Plain-Python softmax of a list of floats at a temperature."""
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    """KL(p || q) = sum p (log p - log q), with 0 log 0 = 0."""
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def full_mapping(teacher_labels, student_labels):
    return KDMapping.from_projection(project_labels(list(teacher_labels), list(student_labels)))


# ---------------------------------------------------------------------------
# cross_entropy


def test_cross_entropy_hand_value_and_mask():
    emissions = torch.tensor([[[1.0, 2.0], [0.5, -0.5], [3.0, 0.0]]])   # (1, 3, 2)
    labels = torch.tensor([[1, 0, 1]])
    mask = torch.tensor([[True, True, False]])                          # last word excluded
    word0 = math.log(math.exp(1.0) + math.exp(2.0)) - 2.0
    word1 = math.log(math.exp(0.5) + math.exp(-0.5)) - 0.5
    expected = (word0 + word1) / 2
    assert cross_entropy(emissions, labels, mask).item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # both real words reduce to log(1 + 1/e); the masked word (label 1, logit 0 vs 3) would add ~3
    assert expected == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-12)


# ---------------------------------------------------------------------------
# kd_loss, full label distribution


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5, 7.0])
def test_kd_full_label_is_zero_when_student_equals_teacher(temperature):
    torch.manual_seed(0)
    logits = torch.randn(2, 4, len(BIO)) * 3
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    loss = kd_loss(logits, logits.clone(), mask, full_mapping(BIO, BIO), temperature)
    assert loss.item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)


def test_kd_full_label_hand_value():
    labels = ("O", "B-PER")
    temperature = 2.0
    s, t = [1.0, 0.0], [0.0, 2.0]
    emissions_s = torch.tensor([[s, [9.0, -9.0]]])   # second word masked out
    emissions_t = torch.tensor([[t, [-9.0, 9.0]]])
    mask = torch.tensor([[True, False]])
    p_s, p_t = softmax(s, temperature), softmax(t, temperature)
    expected = temperature ** 2 * kl(p_t, p_s)
    loss = kd_loss(emissions_s, emissions_t, mask, full_mapping(labels, labels), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert expected == pytest.approx(1.0296, abs=1e-4)   # checked on paper: 4 * 0.2574


def test_kd_full_label_mean_over_words():
    labels = ("O", "B-PER")
    s1, t1, s2, t2 = [1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [3.0, -1.0]
    loss = kd_loss(torch.tensor([[s1, s2]]), torch.tensor([[t1, t2]]), torch.tensor([[True, True]]),
                   full_mapping(labels, labels), 1.0)
    expected = (kl(softmax(t1), softmax(s1)) + kl(softmax(t2), softmax(s2))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_kd_full_label_permutes_teacher_columns():
    teacher = ("B-PER", "O", "I-PER")
    student = ("O", "B-PER", "I-PER")
    mapping = full_mapping(teacher, student)
    assert mapping.teacher_order.tolist() == [1, 0, 2]
    emissions_s = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]]])   # student order
    emissions_t = emissions_s[..., [1, 0, 2]]                           # same logits, teacher order
    mask = torch.tensor([[True, True]])
    assert kd_loss(emissions_s, emissions_t, mask, mapping, 2.0).item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)
    # without the permutation the columns would be misread: the unpermuted logits give a loss
    assert kd_loss(emissions_s, emissions_s.clone(), mask, mapping, 2.0).item() > 0.1


# ---------------------------------------------------------------------------
# kd_loss, type level


def test_type_level_projection_shape():
    projection = project_labels(list(TEACHER_IO), list(BIO))
    assert not projection.full_label
    assert projection.types == ("O", "PER", "LOC")
    assert projection.teacher_type_ids == (0, 2, 1, 0, 0)   # MISC and ORG fold into O
    assert projection.student_type_ids == (0, 1, 1, 2, 2)


def test_kd_type_level_hand_value():
    mapping = KDMapping.from_projection(project_labels(list(TEACHER_IO), list(BIO)))
    temperature = 2.5
    t = [1.0, 0.0, 2.0, -1.0, 0.5]           # O, I-LOC, I-PER, I-MISC, I-ORG
    s = [0.2, 1.5, -0.5, 0.0, 1.0]           # O, B-PER, I-PER, B-LOC, I-LOC
    p_t, p_s = softmax(t, temperature), softmax(s, temperature)
    q_t = [p_t[0] + p_t[3] + p_t[4], p_t[2], p_t[1]]     # types O, PER, LOC
    q_s = [p_s[0], p_s[1] + p_s[2], p_s[3] + p_s[4]]
    expected = temperature ** 2 * kl(q_t, q_s)
    loss = kd_loss(torch.tensor([[s]]), torch.tensor([[t]]), torch.tensor([[True]]), mapping, temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert expected == pytest.approx(2.0374, abs=1e-4)   # checked on paper: 6.25 * 0.326


def test_kd_type_level_zero_when_type_distributions_match():
    mapping = KDMapping.from_projection(project_labels(list(TEACHER_IO), list(BIO)))
    temperature = 2.0
    # teacher: O .2, LOC .3, PER .1, MISC .25, ORG .15 -> types O .6, PER .1, LOC .3
    p_t = [0.2, 0.3, 0.1, 0.25, 0.15]
    # student: same type masses, split differently between B- and I-
    p_s = [0.6, 0.04, 0.06, 0.1, 0.2]
    # logits T * log p soften back to exactly p at temperature T
    emissions_t = torch.tensor([[[temperature * math.log(p) for p in p_t]]])
    emissions_s = torch.tensor([[[temperature * math.log(p) for p in p_s]]])
    mask = torch.tensor([[True]])
    assert kd_loss(emissions_s, emissions_t, mask, mapping, temperature).item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)
    # a full-label comparison of the same numbers would not be 0: the type-level path is what matters
    other_split = torch.tensor([[[temperature * math.log(p) for p in (0.6, 0.09, 0.01, 0.25, 0.05)]]])
    assert kd_loss(other_split, emissions_t, mask, mapping, temperature).item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)


def test_kd_type_level_ignores_masked_words():
    mapping = KDMapping.from_projection(project_labels(list(TEACHER_IO), list(BIO)))
    s = [0.2, 1.5, -0.5, 0.0, 1.0]
    t = [1.0, 0.0, 2.0, -1.0, 0.5]
    alone = kd_loss(torch.tensor([[s]]), torch.tensor([[t]]), torch.tensor([[True]]), mapping, 1.5)
    padded = kd_loss(torch.tensor([[s, [50.0, -50.0, 0.0, 0.0, 0.0]]]),
                     torch.tensor([[t, [-50.0, 0.0, 0.0, 0.0, 50.0]]]),
                     torch.tensor([[True, False]]), mapping, 1.5)
    assert padded.item() == pytest.approx(alone.item(), rel=1e-5, abs=1e-6)
    assert alone.item() > 0.01


def test_kd_type_level_teacher_certain_of_one_type():
    """A type the teacher gives 0 mass adds 0 (0 log 0 = 0), not NaN, to the loss and its gradient."""
    mapping = KDMapping.from_projection(project_labels(["O", "I-PER", "I-LOC"], list(BIO)))
    emissions_t = torch.tensor([[[1000.0, -1000.0, -1000.0]]])   # teacher: O with probability 1
    emissions_s = torch.zeros(1, 1, len(BIO), requires_grad=True)  # student uniform: O has 1/5
    loss = kd_loss(emissions_s, emissions_t, torch.tensor([[True]]), mapping, 1.0)
    assert loss.item() == pytest.approx(math.log(5), rel=1e-5, abs=1e-6)     # KL = -log q_s(O)
    loss.backward()
    # d(-log p_O)/d logits = p - onehot(O)
    assert emissions_s.grad[0, 0].tolist() == pytest.approx([-0.8, 0.2, 0.2, 0.2, 0.2], rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------
# known_labels: student types the teacher does not know


def test_known_labels_and_combined_kd_leaves_out_unknown_gold():
    student = ("O", "B-PER", "I-PER", "B-DISO", "I-DISO")
    teacher = ("O", "I-PER", "I-LOC")
    projection = project_labels(list(teacher), list(student))
    assert projection.unknown_to_teacher == ("DISO",)
    mapping = KDMapping.from_projection(projection)
    assert mapping.known_labels.tolist() == [True, True, True, False, False]

    torch.manual_seed(1)
    emissions_s = torch.randn(1, 5, len(student))
    emissions_t = torch.randn(1, 5, len(teacher))
    word_labels = torch.tensor([[0, 3, 4, 1, 0]])          # words 1 and 2 are DISO; word 4 is padding
    word_mask = torch.tensor([[True, True, True, True, False]])
    weights = LossWeights(ce=0.0, kd=1.0, hidden=0.0, crf=0.0)
    total, terms = combined_loss(emissions_s, None, TeacherTargets(emissions_t, None), word_labels,
                                 word_mask, torch.ones(1, 5, dtype=torch.long), None, weights,
                                 mapping, 2.0)
    expected = kd_loss(emissions_s, emissions_t, torch.tensor([[True, False, False, True, False]]),
                       mapping, 2.0)
    assert set(terms) == {"kd"}
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    with_diso = kd_loss(emissions_s, emissions_t, word_mask, mapping, 2.0)
    assert abs(with_diso.item() - expected.item()) > 1e-3   # the exclusion changes the value


def test_kd_with_type_unknown_to_teacher_has_finite_gradient():
    mapping = KDMapping.from_projection(
        project_labels(["O", "I-PER"], ["O", "B-PER", "I-PER", "B-DISO", "I-DISO"]))
    torch.manual_seed(4)
    emissions_s = torch.randn(1, 3, 5, requires_grad=True)
    loss = kd_loss(emissions_s, torch.randn(1, 3, 2), torch.ones(1, 3, dtype=torch.bool), mapping, 2.0)
    loss.backward()
    assert torch.isfinite(loss).item() and loss.item() > 0
    assert torch.isfinite(emissions_s.grad).all().item()


def test_combined_kd_is_zero_when_every_gold_word_is_unknown():
    student = ("O", "B-DISO", "I-DISO")
    mapping = KDMapping.from_projection(project_labels(["O", "I-PER"], list(student)))
    emissions_s = torch.randn(1, 2, 3, requires_grad=True)
    weights = LossWeights(ce=0.0, kd=1.0, hidden=0.0, crf=0.0)
    total, terms = combined_loss(emissions_s, None, TeacherTargets(torch.randn(1, 2, 2), None),
                                 torch.tensor([[1, 2]]), torch.tensor([[True, True]]),
                                 torch.ones(1, 2), None, weights, mapping, 2.0)
    assert terms["kd"].item() == 0.0
    total.backward()   # still part of the graph
    assert emissions_s.grad.abs().sum().item() == 0.0


# ---------------------------------------------------------------------------
# hidden_state_loss


def test_hidden_loss_zero_for_identical_and_scaled_states():
    torch.manual_seed(2)
    h = torch.randn(2, 3, 4)
    mask = torch.ones(2, 3, dtype=torch.long)
    assert hidden_state_loss([h], [h.clone()], mask).item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)
    scale = torch.tensor([0.5, 3.0, 10.0]).view(1, 3, 1)   # a different positive scale per token
    assert hidden_state_loss([h * scale], [h], mask).item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)


def test_hidden_loss_hand_values_padding_and_layer_mean():
    attention_mask = torch.tensor([[1, 1, 0]])
    # token 0: [1,0] vs [0,1] -> 2; token 1: [1,0] vs [1,1]/sqrt2 -> 2 - sqrt2; token 2: padding
    h_s = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1e6, -1e6]]])
    h_t = torch.tensor([[[0.0, 1.0], [1.0, 1.0], [-1e6, 1e6]]])
    layer_a = (2.0 + (2.0 - math.sqrt(2.0))) / 2
    assert hidden_state_loss([h_s], [h_t], attention_mask).item() == pytest.approx(layer_a, rel=1e-5, abs=1e-6)
    # second layer pair identical -> 0; the loss is the mean over pairs
    loss = hidden_state_loss([h_s, h_s], [h_t, h_s.clone()], attention_mask)
    assert loss.item() == pytest.approx(layer_a / 2, rel=1e-5, abs=1e-6)
    assert hidden_state_loss([torch.tensor([[[1.0, 0.0]]])], [torch.tensor([[[0.0, 1.0]]])],
                             torch.tensor([[1]])).item() == pytest.approx(2.0, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------
# crf_nll


def hand_crf():
    crf = CRF(3, batch_first=True)
    with torch.no_grad():
        crf.start_transitions.copy_(torch.tensor([0.5, -1.0, 0.2]))
        crf.end_transitions.copy_(torch.tensor([-0.3, 0.4, 0.0]))
        crf.transitions.copy_(torch.tensor([[0.1, -0.2, 0.3],
                                            [0.0, 0.6, -0.5],
                                            [-0.4, 0.2, 0.9]]))
    return crf


def path_score(crf, emissions, path):
    """start + emissions + transitions + end of one label path; emissions a list of lists."""
    start, trans, end = (crf.start_transitions.tolist(), crf.transitions.tolist(),
                         crf.end_transitions.tolist())
    score = start[path[0]] + emissions[0][path[0]]
    for t in range(1, len(path)):
        score += trans[path[t - 1]][path[t]] + emissions[t][path[t]]
    return score + end[path[-1]]


def brute_nll(crf, emissions, gold):
    """-log p(gold) by enumerating every path (log-sum-exp of scores minus gold score)."""
    scores = [path_score(crf, emissions, p) for p in itertools.product(range(3), repeat=len(gold))]
    top = max(scores)
    log_z = top + math.log(sum(math.exp(s - top) for s in scores))
    return log_z - path_score(crf, emissions, gold)


def test_crf_nll_matches_brute_force_token_mean():
    crf = hand_crf()
    emissions = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.3]]
    gold = [2, 1]
    expected = brute_nll(crf, emissions, gold) / 2          # 9 paths, 2 words
    loss = crf_nll(crf, torch.tensor([emissions]), torch.tensor([gold]), torch.tensor([[True, True]]))
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert expected == pytest.approx(1.2293, abs=1e-4)


def test_crf_nll_ignores_padding():
    crf = hand_crf()
    row0 = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.3], [99.0, -99.0, 5.0]]   # last word is padding
    row1 = [[0.0, 1.0, 0.0], [-0.2, 0.1, 0.7], [0.3, 0.3, -0.6]]
    emissions = torch.tensor([row0, row1])
    labels = torch.tensor([[2, 1, 1], [0, 2, 2]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    expected = (brute_nll(crf, row0[:2], [2, 1]) + brute_nll(crf, row1, [0, 2, 2])) / 5
    assert crf_nll(crf, emissions, labels, mask).item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    single = crf_nll(crf, emissions[:1], labels[:1], mask[:1])
    assert single.item() == pytest.approx(brute_nll(crf, row0[:2], [2, 1]) / 2, rel=1e-5, abs=1e-5)


def test_crf_nll_equals_pytorch_crf_value_and_gradient():
    torch.manual_seed(3)
    crf = CRF(5, batch_first=True)
    emissions = torch.randn(4, 7, 5, requires_grad=True)
    labels = torch.randint(0, 5, (4, 7))
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([[7], [3], [1], [5]])
    ours = crf_nll(crf, emissions, labels, mask)
    reference = -crf(emissions, labels, mask=mask, reduction="token_mean")
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-5)
    grads = torch.autograd.grad(ours, [emissions, crf.transitions])
    reference_grads = torch.autograd.grad(reference, [emissions, crf.transitions])
    for mine, theirs in zip(grads, reference_grads):
        assert torch.allclose(mine, theirs, atol=1e-5)


# ---------------------------------------------------------------------------
# combined_loss


def test_combined_loss_zero_weights_skip_terms():
    emissions = torch.tensor([[[1.0, 2.0], [0.5, -0.5], [3.0, 0.0]]])
    labels = torch.tensor([[1, 0, 0]])
    mask = torch.tensor([[True, True, False]])
    weights = LossWeights(ce=0.5, kd=0.0, hidden=0.0, crf=0.0)
    total, terms = combined_loss(emissions, None, None, labels, mask, torch.ones(1, 4), None,
                                 weights, None, 2.0)
    assert set(terms) == {"ce"}
    assert terms["ce"].item() == pytest.approx(cross_entropy(emissions, labels, mask).item(), rel=1e-5, abs=1e-7)
    assert total.item() == pytest.approx(0.5 * terms["ce"].item(), rel=1e-5, abs=1e-7)
    # kd on, hidden off with no hidden states anywhere
    labels2 = ("O", "B-PER")
    weights = LossWeights(ce=0.0, kd=1.0, hidden=0.0, crf=0.0)
    total, terms = combined_loss(emissions, None, TeacherTargets(emissions.clone(), None), labels, mask,
                                 torch.ones(1, 4), None, weights, full_mapping(labels2, labels2), 2.0)
    assert set(terms) == {"kd"}
    assert total.item() == pytest.approx(0.0, rel=1e-5, abs=1e-6)


def test_combined_loss_total_is_weighted_sum():
    torch.manual_seed(3)
    labels_bio = ("O", "B-PER", "I-PER")
    crf = hand_crf()
    emissions_s = torch.randn(2, 3, 3)
    emissions_t = torch.randn(2, 3, 3)
    word_labels = torch.tensor([[0, 1, 2], [1, 0, 0]])
    word_mask = torch.tensor([[True, True, True], [True, True, False]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    hidden_s = [torch.randn(2, 4, 6), torch.randn(2, 4, 6)]
    hidden_t = [torch.randn(2, 4, 6), torch.randn(2, 4, 6)]
    weights = LossWeights(ce=0.5, kd=2.0, hidden=0.3, crf=0.7)
    mapping = full_mapping(labels_bio, labels_bio)
    total, terms = combined_loss(emissions_s, hidden_s, TeacherTargets(emissions_t, hidden_t), word_labels,
                                 word_mask, attention_mask, crf, weights, mapping, 2.5)
    assert set(terms) == {"ce", "kd", "hidden", "crf"}
    assert terms["ce"].item() == pytest.approx(cross_entropy(emissions_s, word_labels, word_mask).item(), rel=1e-5, abs=1e-6)
    assert terms["kd"].item() == pytest.approx(kd_loss(emissions_s, emissions_t, word_mask, mapping, 2.5).item(), rel=1e-5, abs=1e-6)
    assert terms["hidden"].item() == pytest.approx(hidden_state_loss(hidden_s, hidden_t, attention_mask).item(), rel=1e-5, abs=1e-6)
    assert terms["crf"].item() == pytest.approx(crf_nll(crf, emissions_s, word_labels, word_mask).item(), rel=1e-5, abs=1e-6)
    expected = (0.5 * terms["ce"] + 2.0 * terms["kd"] + 0.3 * terms["hidden"] + 0.7 * terms["crf"]).item()
    assert total.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
