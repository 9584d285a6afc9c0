"""The kit's statistics: paired tests that count seeds, equivalence, Holm, Friedman and Nemenyi.

Every table and every verdict of the kit is decided here, by one set of rules (README, "Statistics"):

  * Per-query values are averaged over seeds first; the query is the unit of the paired test.
  * Seeds count too. A seed shifts a whole run up or down, the same for every query, so the spread of
    the per-query differences does not see it. With 2 or more seeds per side, the standard error of a
    difference therefore adds the variance of each system's per-seed means (over its seeds), with
    Welch-Satterthwaite degrees of freedom: when seed noise swamps a small effect, the test says so.
    With one seed the seed noise is unknown and the test is over queries alone (`seed_noise_known`).
  * "No better" and "matches" need a test of their own: one-sided tests against a margin (Schuirmann's
    two one-sided tests for equivalence), never the absence of a significant difference.
  * Holm-Bonferroni within the family the caller passes; a comparison that cannot be tested (one query)
    has the p-value nan, stays nan, and is not counted in the family.
  * Over blocks (backbone x collection), Friedman's test of the mean ranks, then Nemenyi's critical
    difference (Demsar, JMLR 2006).

Sections: 1. one difference, 2. Holm and the table's comparisons, 3. ranks over blocks.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence, Union

import numpy as np
import scipy.stats

PerQuery = Mapping[str, float]                    # {qid: value} for one run
SeedRuns = Union[PerQuery, Sequence[PerQuery]]    # one run, or one per seed


# ================================================================================================
# 1. One difference A - B, over one or several collections
# ================================================================================================
def _seeds(per_query: SeedRuns, side: str) -> list[dict[str, float]]:
    """The runs of one side, one {qid: value} per seed, every seed covering the same queries."""
    seeds = [per_query] if isinstance(per_query, Mapping) else list(per_query)
    if not seeds:
        raise ValueError(f"side {side}: empty list of seeds")
    for i, seed in enumerate(seeds[1:], start=1):
        if set(seed) != set(seeds[0]):
            raise ValueError(f"side {side}: seed {i} covers other queries than seed 0")
    return [{q: float(v) for q, v in seed.items()} for seed in seeds]


def _paired(per_query_a: SeedRuns, per_query_b: SeedRuns):
    """Both sides' seeds, and their seed-averaged per-query values aligned by query id. Both must cover the same
    queries: silently intersecting would hide a run that lost queries."""
    a, b = _seeds(per_query_a, "A"), _seeds(per_query_b, "B")
    differ = sorted(set(a[0]) ^ set(b[0]))
    if differ:
        raise ValueError(f"A and B cover different queries: {len(differ)} query ids are in only "
                         f"one side (e.g. {differ[0]!r})")
    qids = sorted(a[0])
    mean_a = np.array([np.mean([s[q] for s in a]) for q in qids])
    mean_b = np.array([np.mean([s[q] for s in b]) for q in qids])
    return a, b, mean_a, mean_b


class TTest(NamedTuple):
    statistic: float
    pvalue: float
    mean_diff: float  # mean over queries of (a - b): the effect size, in units of the measure
    n: int            # number of queries


def paired_ttest(per_query_a: SeedRuns, per_query_b: SeedRuns) -> TTest:
    """Two-sided paired t-test of A against B over queries alone (seeds averaged per query first), as IR papers
    run it. The kit's tables and verdicts use `difference`, which also counts the seeds' own spread."""
    _, _, x, y = _paired(per_query_a, per_query_b)
    if len(x) < 2:
        raise ValueError(f"a paired t-test needs at least 2 queries, got {len(x)}")
    diff = x - y
    if np.all(diff == 0):
        # scipy returns nan for a zero-variance zero-mean difference; "no difference" is p = 1.
        return TTest(0.0, 1.0, 0.0, len(x))
    res = scipy.stats.ttest_rel(x, y, alternative="two-sided")
    return TTest(float(res.statistic), float(res.pvalue), float(diff.mean()), len(x))


class Difference(NamedTuple):
    """A - B: the mean per-query difference of each collection, averaged over collections with equal weights
    (as the tables average collections), with its standard error and Welch-Satterthwaite degrees of freedom.

    The standard error combines the query-level part (each collection's paired differences) and, where a side
    has 2 or more seeds, the seed-level part: the variance of that side's per-seed means divided by its number
    of seeds. se is nan when a collection has fewer than 2 queries: nothing can be tested then."""
    mean: float
    se: float
    df: float
    n: int                       # queries, over all collections
    seeds: tuple[int, int]       # seeds of A and of B
    seed_diffs: tuple[float, ...]  # A - B per seed (paired by position) when both sides have as many seeds

    @property
    def testable(self) -> bool:
        return math.isfinite(self.se)

    @property
    def seed_noise_known(self) -> bool:
        return min(self.seeds) >= 2

    def _t(self, shift: float = 0.0) -> float:
        return (self.mean - shift) / self.se

    def pvalue(self) -> float:
        """Two-sided p of H0: the difference is 0 (nan when untestable)."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 1.0 if self.mean == 0 else 0.0
        return float(2 * scipy.stats.t.sf(abs(self._t()), self.df))

    def below_pvalue(self, margin: float) -> float:
        """One-sided p of H0: difference >= +margin. Small: A is shown to be no better than B by the margin
        (non-superiority)."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean < margin else 1.0
        return float(scipy.stats.t.cdf(self._t(margin), self.df))

    def above_pvalue(self, margin: float) -> float:
        """One-sided p of H0: difference <= -margin. Small: A is shown to be no worse than B by the margin
        (non-inferiority)."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean > -margin else 1.0
        return float(scipy.stats.t.sf(self._t(-margin), self.df))

    def equivalence_pvalue(self, margin: float) -> float:
        """Two one-sided tests (Schuirmann 1987) of H0: |difference| >= margin; a small p shows that the
        difference lies within (-margin, +margin)."""
        return max(self.below_pvalue(margin), self.above_pvalue(margin))

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        if not self.testable:
            return math.nan, math.nan
        half = float(scipy.stats.t.ppf(0.5 + level / 2, self.df) * self.se) if self.se else 0.0
        return self.mean - half, self.mean + half


def difference(collections: Sequence[tuple[SeedRuns, SeedRuns]]) -> Difference:
    """A - B over one or several collections, one (A, B) pair of per-query values (one dict per seed) each."""
    means, parts, counts, seeds_a, seeds_b = [], [], [], [], []
    for per_query_a, per_query_b in collections:
        a, b, x, y = _paired(per_query_a, per_query_b)
        means.append(float((x - y).mean()))
        parts.append(float((x - y).var(ddof=1)) / len(x) if len(x) > 1 else math.nan)  # squared se of the mean
        counts.append(len(x))
        seeds_a.append([float(np.mean(list(s.values()))) for s in a])  # each seed's mean on this collection
        seeds_b.append([float(np.mean(list(s.values()))) for s in b])
    k = len(means)
    if k == 0:
        raise ValueError("a difference needs at least one collection")
    # Per seed, the mean over collections (equal weights); seeds are paired by position.
    k_a, k_b = min(map(len, seeds_a)), min(map(len, seeds_b))
    per_seed_a = [float(np.mean([s[i] for s in seeds_a])) for i in range(k_a)]
    per_seed_b = [float(np.mean([s[i] for s in seeds_b])) for i in range(k_b)]
    seed_diffs = tuple(x - y for x, y in zip(per_seed_a, per_seed_b)) if k_a == k_b else ()
    # Variance terms with their degrees of freedom: each collection's queries, then each side's seeds.
    terms = [(v / k ** 2, n - 1) for v, n in zip(parts, counts)]
    terms += [(float(np.var(s, ddof=1)) / len(s), len(s) - 1) for s in (per_seed_a, per_seed_b) if len(s) >= 2]
    variance = sum(v for v, _ in terms)
    if not math.isfinite(variance):
        return Difference(float(np.mean(means)), math.nan, math.nan, sum(counts), (k_a, k_b), seed_diffs)
    denominator = sum(v ** 2 / df for v, df in terms if v > 0)
    df = variance ** 2 / denominator if denominator > 0 else math.inf
    return Difference(float(np.mean(means)), float(np.sqrt(variance)), float(df), sum(counts), (k_a, k_b), seed_diffs)


# ================================================================================================
# 2. Holm-Bonferroni, and each table's tests against its baseline
# ================================================================================================
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order.

    The i-th smallest p (1-based) is multiplied by (m - i + 1); a running maximum keeps the adjusted values
    monotone in the raw ones, and they are capped at 1. The family is what the caller passes, less the
    comparisons that could not be tested (p = nan): they stay nan and do not enlarge the family.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(len(p), np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for rank, idx in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, (len(tested) - rank) * p[idx])
        adjusted[idx] = min(1.0, running)
    return adjusted.tolist()


class Comparison(NamedTuple):
    pvalue: float
    pvalue_holm: float
    mean_diff: float   # system - baseline, averaged over queries (seed-averaged per query)
    significant: bool  # pvalue_holm < alpha
    seed_diffs: tuple[float, ...] = ()  # the difference in each seed, when both have as many seeds


def compare_to_baseline(per_query, baseline: str, alpha: float = 0.05):
    """Test every system against ``baseline``, column by column (one column = one collection), with `difference`.

    ``per_query``: {system: {column: [ {qid: value} per seed ]}} for ONE measure. Within each column the family
    is the systems that have that column, and Holm is applied to it. Returns {system: {column: Comparison}} for
    non-baseline systems; columns that the system or the baseline lacks are skipped.
    """
    if baseline not in per_query:
        raise ValueError(f"baseline {baseline!r} not among systems {list(per_query)}")
    out: dict[str, dict[str, Comparison]] = {s: {} for s in per_query if s != baseline}
    for column, base_runs in per_query[baseline].items():
        systems = [s for s in out if column in per_query[s]]
        tests = [difference([(per_query[s][column], base_runs)]) for s in systems]
        adjusted = holm([t.pvalue() for t in tests])
        for s, t, p_holm in zip(systems, tests, adjusted):
            out[s][column] = Comparison(t.pvalue(), p_holm, t.mean, bool(p_holm < alpha), t.seed_diffs)
    return out


# ================================================================================================
# 3. Ranks over blocks: Friedman, then Nemenyi
# ================================================================================================
class Ranks(NamedTuple):
    mean_rank: dict[str, float]  # rank 1 = best, ties averaged, over the blocks
    blocks: int
    statistic: float             # Friedman's chi-square
    pvalue: float
    critical_difference: float   # Nemenyi: two mean ranks further apart than this differ at alpha
    differ: list[tuple[str, str, float]]  # (better, worse, rank gap) of the pairs that differ


def friedman_nemenyi(blocks: Sequence[Mapping[str, float]], alpha: float = 0.05) -> Ranks:
    """Friedman's test that the treatments (objectives) rank alike over the blocks (backbone x collection, each
    with every treatment), then Nemenyi's post-hoc test, whose critical difference already holds the family of
    all pairs at alpha: CD = q_alpha(k, inf) / sqrt(2) * sqrt(k (k + 1) / (6 N)) (Demsar 2006). Pairs are said
    to differ only when Friedman's test rejects."""
    names = sorted({t for block in blocks for t in block})
    full = [b for b in blocks if all(t in b for t in names)]
    k, n = len(names), len(full)
    if k < 3 or n < 2:
        raise ValueError(f"Friedman's test needs >= 3 treatments and >= 2 full blocks, got {k} and {n}")
    ranks = np.array([scipy.stats.rankdata([-b[t] for t in names]) for b in full])  # higher value = rank 1
    mean_rank = dict(zip(names, ranks.mean(axis=0).tolist()))
    statistic, pvalue = scipy.stats.friedmanchisquare(*[[b[t] for b in full] for t in names])
    q = scipy.stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    cd = float(q * math.sqrt(k * (k + 1) / (6 * n)))
    differ = []
    if pvalue < alpha:
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                gap = mean_rank[y] - mean_rank[x]
                if abs(gap) > cd:
                    differ.append((x, y, gap) if gap > 0 else (y, x, -gap))
    differ.sort(key=lambda d: -d[2])
    return Ranks(mean_rank, n, float(statistic), float(pvalue), cd, differ)
