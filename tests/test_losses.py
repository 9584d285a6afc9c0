"""Unit tests for losses.py: hand-computed values, invariances and error messages.

Expected values are written out with ``math`` on explicit numbers, never by calling
the same formula through torch.
"""

import inspect
import math

import pytest
import torch

import losses
from losses import LOSSES, adr_mse, bce, distill_ranknet, get_loss, hinge, infonce, kl, margin_mse

NAMES = ["bce", "hinge", "infonce", "margin_mse", "distill_ranknet", "adr_mse", "kl"]
PAIR_LOSSES = ["hinge", "margin_mse", "distill_ranknet", "adr_mse"]


def T(rows):
    return torch.tensor(rows, dtype=torch.float32)


def value(fn, scores, targets, **kwargs):
    return fn(T(scores), T(targets), **kwargs).item()


def close(expected):
    # fp32 computation: ~1e-7 relative error, more after cancellation in a difference
    return pytest.approx(expected, rel=1e-5, abs=1e-6)


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# Graded targets with the positive in column 0 and at least one label > 0 per row,
# so every loss accepts them. Row 1 has a tie in the teacher scores.
TARGETS = [[3.0, 2.0, 1.0, 0.0], [2.0, 0.0, 1.0, 0.0]]
SCORES = [[0.3, 1.2, -0.4, 0.9], [-1.0, 0.5, 2.0, 0.1]]


# --- registry and signature -----------------------------------------------------------

def test_registry_has_exactly_the_documented_names():
    assert list(LOSSES) == NAMES
    for name in NAMES:
        assert get_loss(name) is LOSSES[name] is getattr(losses, name)


def test_hyper_parameters_are_keyword_only_with_defaults():
    for fn in LOSSES.values():
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == ["scores", "targets"]
        for p in params[2:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty


def test_get_loss_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'mse'.*bce, hinge, infonce, margin_mse"):
        get_loss("mse")


# --- hand-computed values ---------------------------------------------------------------

def test_bce_value():
    expected = (softplus(-2.0) + softplus(-1.0)) / 2  # log(1+e^-2) for y=1, log(1+e^-1) for y=0
    assert value(bce, [[2.0, -1.0]], [[1, 0]]) == close(expected)
    # graded labels: anything > 0 is relevant
    expected = (softplus(-2.0) + softplus(-1.0) + softplus(-0.5)) / 3
    assert value(bce, [[2.0, -1.0, 0.5]], [[2, 0, 1]]) == close(expected)


def test_hinge_value():
    # pairs (0,1), (0,2), (1,2) with margins 0.5, 3.0, 2.5
    assert value(hinge, [[2.0, 1.5, -1.0]], [[2, 1, 0]]) == close(0.5 / 3)
    assert value(hinge, [[2.0, 1.5, -1.0]], [[2, 1, 0]], margin=2.0) == close(1.5 / 3)


def test_hinge_and_ranknet_average_over_all_pairs_in_the_batch():
    # row 0 has 2 pairs, row 1 has 3: the mean is over 5 pairs, not a mean of row means
    scores, targets = [[0.0, 1.0, -1.0], [2.0, 1.5, -1.0]], [[1, 0, 0], [2, 1, 0]]
    margins = [-1.0, 1.0, 0.5, 3.0, 2.5]
    expected_hinge = sum(max(0.0, 1.0 - m) for m in margins) / 5
    expected_ranknet = sum(softplus(-m) for m in margins) / 5
    assert value(hinge, scores, targets) == close(expected_hinge)
    assert value(distill_ranknet, scores, targets) == close(expected_ranknet)


def test_infonce_value():
    e = math.exp
    one_positive = math.log(e(1) + e(2) + e(0)) - 1.0
    two_positives = math.log(e(1) + e(2) + e(0)) - math.log(e(1) + e(2))
    assert value(infonce, [[1.0, 2.0, 0.0]], [[1, 0, 0]]) == close(one_positive)
    assert value(infonce, [[1.0, 2.0, 0.0]], [[1, 1, 0]]) == close(two_positives)
    # mean over queries
    expected = (one_positive + two_positives) / 2
    assert value(infonce, [[1.0, 2.0, 0.0]] * 2, [[1, 0, 0], [1, 1, 0]]) == close(expected)
    # temperature 0.5 doubles the logits
    expected = math.log(e(2) + e(4) + e(0)) - 2.0
    assert value(infonce, [[1.0, 2.0, 0.0]], [[1, 0, 0]], temperature=0.5) == close(expected)


def test_margin_mse_value():
    # student margins 0.5, 2.0; teacher margins 2.0, 1.0
    expected = ((0.5 - 2.0) ** 2 + (2.0 - 1.0) ** 2) / 2
    assert value(margin_mse, [[1.0, 0.5, -1.0]], [[3.0, 1.0, 2.0]]) == close(expected)


def test_margin_mse_is_signed():
    teacher = [[5.0, 2.0]]  # teacher margin +3
    assert value(margin_mse, [[1.0, -2.0]], teacher) == 0.0  # student margin +3
    assert value(margin_mse, [[-2.0, 1.0]], teacher) == pytest.approx(36.0)  # margin −3: (−3 − 3)²


def test_distill_ranknet_value():
    expected = (softplus(-0.5) + softplus(-3.0) + softplus(-2.5)) / 3
    assert value(distill_ranknet, [[2.0, 1.5, -1.0]], [[2, 1, 0]]) == close(expected)


def test_adr_mse_value():
    # teacher ranks 1, 2, 3; π_i = 1 + Σ_{j≠i} σ(s_j − s_i)
    s = [0.0, 1.0, -1.0]
    for temp in (1.0, 2.0):
        pi = [1 + sum(sigmoid((s[j] - s[i]) / temp) for j in range(3) if j != i) for i in range(3)]
        expected = sum((pi[i] - r) ** 2 / math.log2(1 + r) for i, r in enumerate([1, 2, 3])) / 3
        assert value(adr_mse, [s], [[2.0, 1.0, 0.0]], temperature=temp) == close(expected)


def test_adr_mse_ties_get_average_rank():
    # two tied teacher scores: rank 1.5 each; a student that ties them exactly has loss 0
    assert value(adr_mse, [[0.0, 0.0]], [[3.0, 3.0]]) == 0.0
    # arbitrary tie-breaking (ranks 1, 2) would give (0.5²/log2 2 + 0.5²/log2 3)/2 instead
    # three candidates, ranks 1.5, 1.5, 3
    s = [1.0, -1.0, 0.0]
    pi = [1 + sum(sigmoid(s[j] - s[i]) for j in range(3) if j != i) for i in range(3)]
    expected = sum((pi[i] - r) ** 2 / math.log2(1 + r) for i, r in enumerate([1.5, 1.5, 3.0])) / 3
    assert value(adr_mse, [s], [[3.0, 3.0, 1.0]]) == close(expected)
    # separating tied candidates costs something
    assert value(adr_mse, [[1.0, -1.0]], [[3.0, 3.0]]) > 0.0


def test_kl_value():
    def kl_divergence(teacher, student):
        zt = sum(math.exp(x) for x in teacher)
        zs = sum(math.exp(x) for x in student)
        p = [math.exp(x) / zt for x in teacher]
        q = [math.exp(x) / zs for x in student]
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    s, t = [1.0, 0.0], [2.0, 0.0]
    assert value(kl, [s], [t]) == close(kl_divergence(t, s))
    # τ = 2 halves both logits and multiplies the divergence by 4
    expected = 4 * kl_divergence([1.0, 0.0], [0.5, 0.0])
    assert value(kl, [s], [t], temperature=2.0) == close(expected)
    # mean over queries
    expected = (kl_divergence(t, s) + kl_divergence([0.0, 1.0], [0.0, 3.0])) / 2
    assert value(kl, [s, [0.0, 3.0]], [t, [0.0, 1.0]]) == close(expected)
    assert value(kl, [[0.3, -1.0, 2.0]], [[0.3, -1.0, 2.0]]) == pytest.approx(0.0, abs=1e-7)


# --- invariances ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in NAMES if n != "bce"])
def test_shifting_scores_per_query_leaves_loss_unchanged(name):
    shifted = T(SCORES) + T([[5.0], [-3.0]])
    assert LOSSES[name](shifted, T(TARGETS)).item() == close(LOSSES[name](T(SCORES), T(TARGETS)).item())


def test_bce_depends_on_the_absolute_score():
    assert value(bce, [[1.0, 0.0]], [[1, 0]]) != pytest.approx(value(bce, [[6.0, 5.0]], [[1, 0]]))


@pytest.mark.parametrize("name", ["margin_mse", "distill_ranknet", "adr_mse", "kl"])
def test_shifting_teacher_scores_per_query_leaves_distillation_unchanged(name):
    # 101 − rank and −rank must train the same way
    shifted = T(TARGETS) + T([[101.0], [-7.0]])
    assert LOSSES[name](T(SCORES), shifted).item() == close(LOSSES[name](T(SCORES), T(TARGETS)).item())


@pytest.mark.parametrize("name", NAMES)
def test_permuting_candidates_with_targets_leaves_loss_unchanged(name):
    # margin_mse keeps the positive in column 0
    perm = [0, 3, 1, 2] if name == "margin_mse" else [2, 0, 3, 1]
    s, t = T(SCORES), T(TARGETS)
    assert LOSSES[name](s[:, perm], t[:, perm]).item() == close(LOSSES[name](s, t).item())


# --- direction of the signal --------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_perfect_ranking_beats_its_reverse(name):
    targets = T([[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    perfect = T([[3.0, 1.0, -1.0, -3.0], [2.0, 0.0, -1.0, -2.0]])
    reverse = perfect.flip(1)
    assert LOSSES[name](perfect, targets).item() < LOSSES[name](reverse, targets).item()


@pytest.mark.parametrize("name", NAMES)
def test_gradient_raises_the_positive(name):
    scores = T([[0.1, 0.5, -0.2]]).requires_grad_()
    LOSSES[name](scores, T([[2.0, 1.0, 0.0]])).backward()
    assert scores.grad[0, 0] < 0


# --- precision --------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_bf16_scores_give_fp32_loss(name):
    scores = T(SCORES).bfloat16().requires_grad_()
    loss = LOSSES[name](scores, T(TARGETS).bfloat16())
    assert loss.dtype == torch.float32
    # same value as feeding the (bf16-representable) scores in fp32
    assert loss.item() == close(LOSSES[name](scores.float(), T(TARGETS)).item())
    loss.backward()
    assert scores.grad.dtype == torch.bfloat16


# --- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match=rf"^{name}: .*same shape"):
        LOSSES[name](torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize("name", NAMES)
def test_non_2d_input_raises(name):
    with pytest.raises(ValueError, match=rf"^{name}: .*2-D"):
        LOSSES[name](torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_targets_raise(name, bad):
    with pytest.raises(ValueError, match=rf"^{name}: targets contain NaN or infinite"):
        LOSSES[name](torch.zeros(1, 3), T([[1.0, bad, 0.0]]))


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_losses_need_two_candidates(name):
    with pytest.raises(ValueError, match=rf"^{name}: needs at least 1 query and 2 candidate"):
        LOSSES[name](torch.zeros(4, 1), torch.ones(4, 1))


def test_single_candidate_is_allowed_where_no_pair_is_needed():
    assert value(infonce, [[0.7]], [[1.0]]) == pytest.approx(0.0, abs=1e-7)
    assert value(kl, [[0.7]], [[3.0]]) == pytest.approx(0.0, abs=1e-7)


def test_empty_batch_raises():
    with pytest.raises(ValueError, match=r"^kl: needs at least 1 query"):
        kl(torch.zeros(0, 3), torch.zeros(0, 3))


@pytest.mark.parametrize("name", ["hinge", "distill_ranknet"])
def test_all_tied_targets_raise(name):
    with pytest.raises(ValueError, match=rf"^{name}: no ordered pair"):
        LOSSES[name](torch.zeros(2, 3), torch.ones(2, 3))


def test_all_tied_targets_are_fine_for_adr_mse():
    assert value(adr_mse, [[0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0]]) == 0.0


def test_infonce_without_positive_names_the_row():
    with pytest.raises(ValueError, match=r"^infonce: no positive .* row\(s\) \[1\]"):
        infonce(torch.zeros(3, 2), T([[1, 0], [0, 0], [0, 1]]))


@pytest.mark.parametrize("name", ["infonce", "adr_mse", "kl"])
def test_non_positive_temperature_raises(name):
    with pytest.raises(ValueError, match=rf"^{name}: temperature must be > 0"):
        LOSSES[name](T(SCORES), T(TARGETS), temperature=0.0)
