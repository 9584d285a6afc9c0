"""Training objectives for cross-encoder re-rankers, one function per objective.

Every loss has the same signature::

    loss(scores, targets, *, <hyper-parameters>) -> scalar tensor

- ``scores``: the student's raw logits for a batch of groups, shape ``[Q, n]``
  (Q queries, n candidates per query).
- ``targets``: same shape. Relevance labels for the supervised objectives, teacher
  scores for the distillation ones. Higher is always better. A teacher *ranking* is
  passed as scores, e.g. ``101 - rank`` as in the Rank-DistiLLM run files.
- Hyper-parameters are keyword-only and have defaults, so any loss can be called
  as ``LOSSES[name](scores, targets)``.
- Computation happens in fp32 whatever dtype the scores arrive in: softmax
  normalisers and sums over n² pairs lose too much precision in bf16.

Data each objective needs, and the batch Morand et al. (2026, arXiv 2603.03010)
used with base-size backbones:

=========================  =============================================  =======================
objective                  data                                           batch in the paper
=========================  =============================================  =======================
bce, hinge                 MS MARCO official train triples (q, d+, d−)    32 triples (64 pairs)
margin_mse                 Hofstätter T2 ensemble teacher scores on the   32 triples
                           triples
infonce                    1 positive + 7 hard negatives sampled from     4 queries × 8 passages
                           the ColBERTv2 top-500
distill_ranknet, adr_mse   RankZephyr ranking of the ColBERTv2 top-50     1 query × 50 passages
kl                         teacher scores over a group (q, d+, D−)        not in Morand et al.;
                                                                          Xu et al. (2025)
=========================  =============================================  =======================

Triples are laid out as ``[Q, 2]`` with the positive in column 0.

Each loss is registered with ``@objective(data)``, which names the data it trains on, in one of five
families (how common.build_training_data builds them is in paper_setup.TrainingSetup):

- ``pairs``: (q, d+, d−) triples with labels (1, 0);
- ``teacher-pairs``: triples with a teacher's scores (Hofstätter's format);
- ``groups``: 1 positive + (n − 1) negatives sampled from a first stage's top-k, labels (1, 0, …);
- ``teacher-groups``: such groups with a teacher's scores;
- ``lists``: a teacher's ranking of a top-k, its scores (101 − rank) as targets.

A new objective is one decorated function here: the scripts, the batches and the results store find it.

Run this file (``python losses.py``) to see every objective on one small hand-made batch: each formula's
terms computed step by step, and the value of the function above beside them.
"""

import torch
import torch.nn.functional as F

LOSSES = {}  # name -> loss function
DATA = {}    # name -> the data family it trains on


def objective(data):
    """Register the decorated loss under its name, with the data family it trains on."""
    def register(loss):
        LOSSES[loss.__name__], DATA[loss.__name__] = loss, data
        return loss
    return register


def _prepare(name, scores, targets, *, min_candidates=1):
    """Validate a (scores, targets) batch and return both as fp32 tensors."""
    if scores.dim() != 2 or targets.dim() != 2:
        raise ValueError(f"{name}: scores and targets must be 2-D [Q, n], "
                         f"got shapes {list(scores.shape)} and {list(targets.shape)}")
    if scores.shape != targets.shape:
        raise ValueError(f"{name}: scores and targets must have the same shape, "
                         f"got {list(scores.shape)} and {list(targets.shape)}")
    q, n = scores.shape
    if q == 0 or n < min_candidates:
        raise ValueError(f"{name}: needs at least 1 query and {min_candidates} candidate(s) "
                         f"per query, got shape {list(scores.shape)}")
    targets = targets.to(device=scores.device, dtype=torch.float32)
    if not torch.isfinite(targets).all():
        raise ValueError(f"{name}: targets contain NaN or infinite values")
    return scores.float(), targets


def _check_temperature(name, temperature):
    if not temperature > 0:
        raise ValueError(f"{name}: temperature must be > 0, got {temperature}")


def _preferred_pairs(name, targets):
    """Boolean mask [Q, n, n]: True where the teacher/labels prefer i over j."""
    mask = targets[:, :, None] > targets[:, None, :]
    if not mask.any():
        raise ValueError(f"{name}: no ordered pair in the batch (all targets tied within each query)")
    return mask


def _pairwise_margins(scores):
    """[Q, n, n] with entry (q, i, j) = s_qi − s_qj."""
    return scores[:, :, None] - scores[:, None, :]


@objective("pairs")
def bce(scores, targets):
    """Pointwise binary cross-entropy on logits.

    L = mean over all Q·n entries of −[y·log σ(s) + (1−y)·log(1−σ(s))],  y = 1[t > 0].

    Source: the standard monoBERT objective (Nogueira & Cho, 2019, arXiv 1901.04085).
    Data: binary (or graded) relevance labels; any target > 0 counts as relevant.
    Paper setting (Morand et al. 2026): official MS MARCO train triples, each split
    into (q, d+) and (q, d−) pairs, 32 triples = 64 pairs per batch.
    Choices: the mean is over every entry, so a ``[32, 2]`` triple batch matches a
    64-pair ``BCEWithLogitsLoss``. Unlike every other loss here, it is not invariant
    to a per-query shift of the scores: it scores each passage on an absolute scale.
    """
    s, t = _prepare("bce", scores, targets)
    return F.binary_cross_entropy_with_logits(s, (t > 0).float())


@objective("pairs")
def hinge(scores, targets, *, margin=1.0):
    """Pairwise hinge (margin ranking) loss.

    L = mean over ordered pairs (q, i, j) with t_qi > t_qj of max(0, margin − (s_qi − s_qj)).

    Source: the pairwise hinge of RankSVM (Joachims, 2002); reproduced as a
    cross-encoder baseline by Morand et al. (2026, arXiv 2603.03010).
    Data: relevance labels; only their order within a query matters.
    Paper setting: official MS MARCO train triples, 32 per batch, margin 1.0.
    Choices: the mean is over all valid pairs in the batch (sum of pair losses divided
    by the number of pairs), not a mean of per-query means; with triples both agree.
    """
    s, t = _prepare("hinge", scores, targets, min_candidates=2)
    mask = _preferred_pairs("hinge", t)
    return F.relu(margin - _pairwise_margins(s))[mask].mean()


@objective("groups")
def infonce(scores, targets, *, temperature=1.0):
    """Listwise softmax cross-entropy over a group of candidates (InfoNCE / LCE).

    L = mean over queries of  logsumexp_j(s_qj/τ) − logsumexp_{i: t_qi > 0}(s_qi/τ)
      = −log Σ_{i relevant} softmax(s_q/τ)_i.

    Source: Gao, Dai & Callan (2021, arXiv 2101.08751, "Localized Contrastive
    Estimation"); the contrastive objective in Xu et al. (2025, arXiv 2507.08336).
    Data: each group needs at least one relevant candidate (target > 0) plus
    negatives; hard negatives come from the retriever being re-ranked.
    Paper setting (Morand et al. 2026): 1 positive + 7 negatives sampled from the
    non-relevant ColBERTv2 top-500 (Rank-DistiLLM run), 4 queries × 8 passages.
    Choices: several positives share their probability mass (as xpmir's
    ListwiseSoftmaxCrossEntropy), rather than keeping only the argmax (lightning-ir).
    It works on raw logits with τ = 1: no sigmoid/tanh, no scale factor and no
    in-batch negatives, unlike sentence-transformers' MultipleNegativesRankingLoss.
    """
    _check_temperature("infonce", temperature)
    s, t = _prepare("infonce", scores, targets)
    positive = t > 0
    missing = (~positive.any(dim=1)).nonzero().flatten().tolist()
    if missing:
        raise ValueError(f"infonce: no positive (target > 0) in row(s) {missing}")
    s = s / temperature
    # -inf drops non-relevant candidates from the numerator's logsumexp.
    relevant = s.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(s, dim=1) - torch.logsumexp(relevant, dim=1)).mean()


@objective("teacher-pairs")
def margin_mse(scores, targets):
    """MarginMSE: match the student's score margins to the teacher's.

    L = mean over (q, j ≥ 1) of ((s_q0 − s_qj) − (t_q0 − t_qj))², column 0 = positive.

    Source: Hofstätter et al. (2020, arXiv 2010.02666).
    Data: teacher scores for (q, d+, d−) triples; column 0 must hold the positive.
    Paper setting (Morand et al. 2026): Hofstätter's T2 teacher (mean ensemble of
    BERT-Base, BERT-Large and ALBERT-Large cross-encoders) on MS MARCO train
    triples, 32 per batch.
    Choices: margins are signed, as in the original code; a student that inverts
    the teacher's preference is penalised (some sentence-transformers docstrings
    showed absolute values). With more than one negative per row, every
    (positive, negative) margin counts once in the mean. The teacher is not
    required to score column 0 highest.
    """
    s, t = _prepare("margin_mse", scores, targets, min_candidates=2)
    student = s[:, :1] - s[:, 1:]
    teacher = t[:, :1] - t[:, 1:]
    return F.mse_loss(student, teacher)


@objective("lists")
def distill_ranknet(scores, targets):
    """DistillRankNet: RankNet on every pair ordered by the teacher.

    L = mean over ordered pairs (q, i, j) with t_qi > t_qj of log(1 + exp(−(s_qi − s_qj))).

    Source: Schlatt et al. (2025, Rank-DistiLLM, arXiv 2405.07920); RankNet is
    Burges et al. (2005).
    Data: a teacher ranking (or scores) over a candidate list per query.
    Paper setting (Morand et al. 2026): RankZephyr re-ranking of the ColBERTv2
    top-50 for 10k MS MARCO train queries, 1 query × 50 passages per batch.
    Choices: the mean is over all valid pairs in the batch (sum of pair losses
    divided by the number of pairs), so a query with more untied pairs weighs more;
    with one query per batch this is the per-query mean. Teacher ties form no pair.
    """
    s, t = _prepare("distill_ranknet", scores, targets, min_candidates=2)
    mask = _preferred_pairs("distill_ranknet", t)
    return F.softplus(-_pairwise_margins(s))[mask].mean()


def _average_ranks(targets):
    """Rank 1 = highest target; tied targets share the mean of the ranks they span."""
    greater = (targets[:, None, :] > targets[:, :, None]).sum(dim=2)
    tied_others = (targets[:, None, :] == targets[:, :, None]).sum(dim=2) - 1
    return 1.0 + greater + 0.5 * tied_others


@objective("lists")
def adr_mse(scores, targets, *, temperature=1.0):
    """ADR-MSE: approximate discounted rank MSE.

    r_qi = 1 + #{j: t_qj > t_qi} + ½·#{j ≠ i: t_qj = t_qi}        (teacher rank)
    π_qi = 1 + Σ_{j≠i} σ((s_qj − s_qi)/T)                          (student's approximate rank)
    L    = mean over (q, i) of (π_qi − r_qi)² / log2(1 + r_qi).

    Source: Schlatt et al. (2025, Rank-DistiLLM, arXiv 2405.07920); the smooth rank
    follows Qin, Liu & Li (2010, ApproxNDCG).
    Data: a teacher ranking over a candidate list per query.
    Paper setting (Morand et al. 2026): same data as distill_ranknet, 1 query × 50
    passages, log2 discount, T = 1.
    Choices: tied teacher scores get their average rank, so a student that ties them
    reaches zero loss (as sentence-transformers' ADRMSELoss); lightning-ir ranks with
    argsort(argsort()), which breaks ties arbitrarily and leaves a non-zero minimum.
    Rank-DistiLLM run files (101 − rank) have no ties, so this matters only for other
    teachers. The 1/log2(1 + r) discount is always on (xpmir hard-codes it too;
    lightning-ir's ApproxRankMSE defaults to no discount).
    """
    _check_temperature("adr_mse", temperature)
    s, t = _prepare("adr_mse", scores, targets, min_candidates=2)
    r = _average_ranks(t)
    # The j = i term contributes σ(0) = ½, so the full sum minus ½ is the j ≠ i sum.
    pi = 0.5 + torch.sigmoid(-_pairwise_margins(s) / temperature).sum(dim=2)
    return ((pi - r) ** 2 / torch.log2(1.0 + r)).mean()


@objective("teacher-groups")
def kl(scores, targets, *, temperature=1.0):
    """Listwise KL distillation with temperature.

    L = τ² · mean over queries of KL(softmax(t_q/τ) ‖ softmax(s_q/τ))
      = τ² · mean_q Σ_j p_qj·(log p_qj − log softmax(s_q/τ)_j),  p_q = softmax(t_q/τ).

    Source: Xu et al. (2025, "Distillation versus Contrastive Learning: How to Train
    Your Rerankers", arXiv 2507.08336); temperature softening and the τ² factor follow
    Hinton, Vinyals & Dean (2015, arXiv 1503.02531).
    Data: teacher scores over a group (q, d+, D−), the same groups InfoNCE uses.
    Paper setting: Xu et al. distil a larger contrastively trained reranker into
    students of 0.5B–7B parameters; their τ could not be established, so the default is 1.
    Choices: forward KL (teacher ‖ student). The τ² factor keeps gradient magnitudes
    comparable across temperatures. Teacher scores are used as logits: a ranking
    given as 101 − rank becomes a steep distribution unless τ is raised.
    """
    _check_temperature("kl", temperature)
    s, t = _prepare("kl", scores, targets)
    log_student = F.log_softmax(s / temperature, dim=1)
    log_teacher = F.log_softmax(t / temperature, dim=1)
    # "batchmean" divides the summed KL by Q: the mean over queries.
    divergence = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return temperature ** 2 * divergence




def get_loss(name):
    """Return the loss function registered under ``name``."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(LOSSES)}") from None


# ================================================================================================
# python losses.py: every objective on one hand-made batch, term by term
# ================================================================================================
def _terms(name, s, labels, teacher):
    """(targets, [(term name, tensor)], value) of `name`, computed by hand from the formula."""
    if name in ("bce", "hinge", "infonce"):
        t = labels
    elif name in ("distill_ranknet", "adr_mse"):
        t = 101.0 - _average_ranks(teacher)  # a teacher ranking as Rank-DistiLLM stores it: 101 - rank
    else:
        t = teacher
    pairs = t[:, :, None] > t[:, None, :]
    if name == "bce":
        y = (t > 0).float()
        entry = -(y * torch.log(torch.sigmoid(s)) + (1 - y) * torch.log(1 - torch.sigmoid(s)))
        return t, [("y = 1[t > 0]", y), ("σ(s)", torch.sigmoid(s)), ("per entry", entry)], entry.mean()
    if name in ("hinge", "distill_ranknet"):
        margin = _pairwise_margins(s)[pairs]
        each = F.relu(1.0 - margin) if name == "hinge" else torch.log1p(torch.exp(-margin))
        return t, [("s_i − s_j over the pairs t_i > t_j", margin), ("per pair", each)], each.mean()
    if name == "infonce":
        p = torch.softmax(s, dim=1)
        per_query = -torch.log((p * (t > 0)).sum(dim=1))
        return t, [("softmax(s)", p), ("−log Σ_relevant softmax", per_query)], per_query.mean()
    if name == "margin_mse":
        student, teacher_margin = s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:]
        squared = (student - teacher_margin) ** 2
        return t, [("s_0 − s_j", student), ("t_0 − t_j", teacher_margin), ("squared difference", squared)], \
            squared.mean()
    if name == "adr_mse":
        r = _average_ranks(t)
        pi = 1 + (torch.sigmoid(s[:, None, :] - s[:, :, None]) * (1 - torch.eye(s.shape[1]))).sum(dim=2)
        each = (pi - r) ** 2 / torch.log2(1 + r)
        return t, [("teacher rank r", r), ("approximate rank π", pi), ("(π − r)² / log2(1 + r)", each)], each.mean()
    p, log_q = torch.softmax(t, dim=1), torch.log_softmax(s, dim=1)
    per_query = (p * (torch.log(p) - log_q)).sum(dim=1)
    return t, [("p = softmax(t)", p), ("softmax(s)", log_q.exp()), ("KL per query", per_query)], per_query.mean()


def main():
    import inspect
    torch.set_printoptions(precision=4, sci_mode=False)
    # Two queries, four candidates each; column 0 holds a relevant passage for the pair objectives.
    scores = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 1.2, -0.4, 0.8]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    teacher = torch.tensor([[3.0, 1.0, -2.0, 0.5], [2.5, 0.0, 1.0, -1.0]])
    print(f"student scores s =\n{scores}\n")
    mismatched = []
    for name, loss in LOSSES.items():
        targets, terms, by_hand = _terms(name, scores, labels, teacher)
        value = float(loss(scores, targets))
        formula = inspect.getdoc(loss).split("\n\n")[1].replace("\n", "\n    ")
        print(f"{name}: {inspect.getdoc(loss).splitlines()[0]}\n    {formula}")
        print(f"  targets t =\n{targets}")
        for label, tensor in terms:
            print(f"  {label} =\n{tensor}")
        print(f"  by hand {float(by_hand):.6f}   {name}() {value:.6f}\n")
        if abs(float(by_hand) - value) > 1e-5:
            mismatched.append(name)
    if mismatched:
        raise SystemExit(f"error: the function and the formula disagree for {', '.join(mismatched)}")


if __name__ == "__main__":
    main()
