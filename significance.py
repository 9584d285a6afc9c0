"""The kit's statistics: paired tests that count seeds, equivalence, Holm, Friedman and Nemenyi.

Every table and every verdict of the kit is decided here, by one set of rules (README, "Statistics"):

  * Per-query values are averaged over seeds first; the query is the unit of the paired test.
  * Seeds count too. A seed shifts a whole run up or down, the same for every query, so the spread of
    the per-query differences does not see it. The standard error of a difference therefore adds each
    side's seed variance divided by its number of seeds, with Welch-Satterthwaite degrees of freedom.
    Tables estimate it per side from that side's own seeds (2+ seeds); verdicts pass one seed variance
    for the whole family (`SeedNoise`: pooled over every run of the claim, or stated by the user), because
    a variance from 2 or 3 seeds is too rough at the small levels Holm asks for.
    With one seed and nothing stated, the seed noise is unknown (`seed_noise_known` is False).
  * "No better" and "matches" need a test of their own: one-sided tests against a margin (Schuirmann's
    two one-sided tests for equivalence), never the absence of a significant difference.
  * Holm-Bonferroni within the family the caller passes; a comparison that cannot be tested (one query)
    has the p-value nan, stays nan, and is not counted in the family.
  * Friedman's test of the mean ranks over blocks, then Nemenyi's critical difference (Demsar, JMLR 2006).

Sections: 1. one difference, 2. Holm and the table's comparisons, 3. ranks over blocks.
"""
from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence, Union

import numpy as np
import scipy.special
import scipy.stats

PerQuery = Mapping[str, float]                    # {qid: value} for one run
SeedRuns = Union[PerQuery, Sequence[PerQuery]]    # one run, or one per seed


# ================================================================================================
# 1. One difference A - B, over one or several collections
# ================================================================================================
def seed_runs(per_query: SeedRuns, side: str) -> list[dict[str, float]]:
    """The runs of one side, one {qid: value} per seed, every seed covering the same queries."""
    seeds = [per_query] if isinstance(per_query, Mapping) else list(per_query)
    if not seeds:
        raise ValueError(f"side {side}: empty list of seeds")
    for i, seed in enumerate(seeds[1:], start=1):
        if set(seed) != set(seeds[0]):
            raise ValueError(f"side {side}: seed {i} covers other queries than seed 0")
    out = [{q: float(v) for q, v in seed.items()} for seed in seeds]
    for i, seed in enumerate(out):
        bad = next((q for q, v in seed.items() if not math.isfinite(v)), None)
        if bad is not None:
            import common  # the kit's one-line error; imported here so that this file stands alone otherwise
            raise common.KitError(f"side {side}, seed {i}: query {bad!r} has the value {seed[bad]} (not a number): "
                                  f"its per_query.json is damaged; delete that cell's eval folder and rerun")
    return out


def _paired(per_query_a: SeedRuns, per_query_b: SeedRuns) -> tuple[np.ndarray, np.ndarray]:
    """Both sides as [seeds, queries] arrays, queries aligned by id. Both must cover the same queries: silently
    intersecting would hide a run that lost queries."""
    a, b = seed_runs(per_query_a, "A"), seed_runs(per_query_b, "B")
    differ = sorted(set(a[0]) ^ set(b[0]))
    if differ:
        raise ValueError(f"A and B cover different queries: {len(differ)} query ids are in only "
                         f"one side (e.g. {differ[0]!r})")
    qids = sorted(a[0])
    return np.array([[s[q] for q in qids] for s in a]), np.array([[s[q] for q in qids] for s in b])


class TTest(NamedTuple):
    statistic: float
    pvalue: float
    mean_diff: float  # mean over queries of (a - b): the effect size, in units of the measure
    n: int            # number of queries


def paired_ttest(per_query_a: SeedRuns, per_query_b: SeedRuns) -> TTest:
    """Two-sided paired t-test of A against B over queries alone (seeds averaged per query first), as IR papers
    run it. The kit's tables and verdicts use `difference`, which also counts the seeds' own spread."""
    a, b = _paired(per_query_a, per_query_b)
    x, y = a.mean(axis=0), b.mean(axis=0)  # seeds averaged per query
    if len(x) < 2:
        raise ValueError(f"a paired t-test needs at least 2 queries, got {len(x)}")
    diff = x - y
    if np.all(diff == 0):
        # scipy returns nan for a zero-variance zero-mean difference; "no difference" is p = 1.
        return TTest(0.0, 1.0, 0.0, len(x))
    res = scipy.stats.ttest_rel(x, y, alternative="two-sided")
    return TTest(float(res.statistic), float(res.pvalue), float(diff.mean()), len(x))


class SeedNoise(NamedTuple):
    """How much a run's mean moves from seed to seed: the variance of one run's mean around its system's mean,
    its degrees of freedom (inf when stated rather than estimated), and where it comes from (printed in verdicts)."""
    variance: float
    df: float
    source: str


def pooled_seed_noise(runs: Sequence[Sequence[float]]) -> SeedNoise | None:
    """One seed variance for a family of runs: `runs` holds, per (system, cell), its per-seed means. The squared
    deviations from each group's own mean are pooled (summed, over the summed n - 1), so 18 groups of 3 seeds give
    36 degrees of freedom where one group alone gives 2. None when no group has 2 seeds."""
    groups = [np.asarray(r, dtype=float) for r in runs if len(r) >= 2]
    df = sum(len(g) - 1 for g in groups)
    if not df:
        return None
    variance = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / df)
    return SeedNoise(variance, float(df), f"seed sd {variance ** 0.5:.4f} pooled over {len(groups)} runs with 2+ "
                                          f"seeds ({df} df)")


def stated_seed_noise(sd: float, source: str) -> SeedNoise:
    """A seed standard deviation stated rather than measured (one seed: nothing to estimate it from)."""
    return SeedNoise(float(sd) ** 2, math.inf, f"seed sd {sd:g} stated ({source})")


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
    seed_noise: str = ""           # where the seed term comes from: "" (per side, or none), else SeedNoise.source

    @property
    def testable(self) -> bool:
        return math.isfinite(self.se)

    @property
    def seed_noise_known(self) -> bool:
        return bool(self.seed_noise) or min(self.seeds) >= 2

    def require_seed_noise(self) -> "Difference":
        """This difference, or an untestable one where the seed noise is unknown (one seed, none stated): the
        query-level test alone would read a seed's shift of the whole run as an effect. For verdicts."""
        return self if self.seed_noise_known else self._replace(se=math.nan, df=math.nan)

    def greater_pvalue(self, shift: float = 0.0) -> float:
        """One-sided p of H0: difference <= shift. Small: A is shown to exceed B by more than `shift`."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean > shift else 1.0
        return float(scipy.special.stdtr(self.df, -self._t(shift)))  # t's survival function, fast

    def less_pvalue(self, shift: float = 0.0) -> float:
        """One-sided p of H0: difference >= shift. Small: A is shown to fall below B + `shift`."""
        if not self.testable:
            return math.nan
        if self.se == 0:
            return 0.0 if self.mean < shift else 1.0
        return float(scipy.special.stdtr(self.df, self._t(shift)))

    def _t(self, shift: float = 0.0) -> float:
        return (self.mean - shift) / self.se

    def pvalue(self) -> float:
        """Two-sided p of H0: the difference is 0 (nan when untestable)."""
        if not self.testable:
            return math.nan
        return min(1.0, 2 * min(self.greater_pvalue(0.0), self.less_pvalue(0.0)))

    def below_pvalue(self, margin: float) -> float:
        """Non-superiority: small when A is shown to be no better than B by the margin."""
        return self.less_pvalue(margin)

    def above_pvalue(self, margin: float) -> float:
        """Non-inferiority: small when A is shown to be no worse than B by the margin."""
        return self.greater_pvalue(-margin)

    def equivalence_pvalue(self, margin: float) -> float:
        """Two one-sided tests (Schuirmann 1987) of H0: |difference| >= margin; a small p shows that the
        difference lies within (-margin, +margin)."""
        return max(self.below_pvalue(margin), self.above_pvalue(margin))

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        if not self.testable:
            return math.nan, math.nan
        half = float(scipy.special.stdtrit(self.df, 0.5 + level / 2) * self.se) if self.se else 0.0
        return self.mean - half, self.mean + half


def difference(collections: Sequence[tuple[SeedRuns, SeedRuns]], seed_noise: SeedNoise | tuple | None = None) \
        -> Difference:
    """A - B over one or several collections, one (A, B) pair of per-query values (one dict per seed) each."""
    return difference_of_arrays([_paired(a, b) for a, b in collections], seed_noise)


def seed_means(collections: Sequence[np.ndarray]) -> np.ndarray:
    """Each seed's mean over the collections (each weighted equally), from one [seeds, queries] array per
    collection; seeds beyond the fewest any collection has are left out."""
    k = min(len(a) for a in collections)
    return np.mean([a[:k].mean(axis=1) for a in collections], axis=0)


def difference_of_arrays(collections: Sequence[tuple[np.ndarray, np.ndarray]],
                         seed_noise: SeedNoise | tuple | None = None) -> Difference:
    """`difference` on arrays: per collection, A's and B's values as [seeds, queries], queries in the same order.

    The seed term: with `seed_noise`, its variance times (1 / seeds of A + 1 / seeds of B) with its degrees of
    freedom (or, given one SeedNoise per side, each side's own); without it, each side's own per-seed means where
    that side has 2 or more seeds."""
    means, parts, counts = [], [], []
    for a, b in collections:
        diff = a.mean(axis=0) - b.mean(axis=0)
        n = diff.size
        means.append(float(diff.mean()))
        parts.append(float(diff.var(ddof=1)) / n if n > 1 else math.nan)  # squared se of the mean
        counts.append(n)
    k = len(means)
    if k == 0:
        raise ValueError("a difference needs at least one collection")
    # Per seed, the mean over collections (equal weights); seeds are paired by position.
    per_seed_a, per_seed_b = seed_means([a for a, _ in collections]), seed_means([b for _, b in collections])
    k_a, k_b = len(per_seed_a), len(per_seed_b)
    seed_diffs = tuple((per_seed_a - per_seed_b).tolist()) if k_a == k_b else ()
    # Variance terms with their degrees of freedom: each collection's queries, then the seeds.
    terms = [(v / k ** 2, n - 1) for v, n in zip(parts, counts)]
    pair = isinstance(seed_noise, tuple) and not isinstance(seed_noise, SeedNoise)
    if pair:  # one per side (two backbones): two terms
        terms += [(n.variance / k, n.df) for n, k in zip(seed_noise, (k_a, k_b))]
    elif seed_noise is not None:  # one variance for both sides: one term, with its degrees of freedom
        terms.append((seed_noise.variance * (1 / k_a + 1 / k_b), seed_noise.df))
    else:
        terms += [(float(np.var(s, ddof=1)) / len(s), len(s) - 1) for s in (per_seed_a, per_seed_b) if len(s) >= 2]
    variance = sum(v for v, _ in terms)
    source = ("; ".join(dict.fromkeys(n.source for n in seed_noise)) if pair
              else seed_noise.source if seed_noise is not None else "")
    mean = float(np.mean(means))
    if not math.isfinite(variance):
        return Difference(mean, math.nan, math.nan, sum(counts), (k_a, k_b), seed_diffs, source)
    denominator = sum(v ** 2 / df for v, df in terms if v > 0)
    df = variance ** 2 / denominator if denominator > 0 else math.inf
    return Difference(mean, float(np.sqrt(variance)), float(df), sum(counts), (k_a, k_b), seed_diffs, source)


def over_units(differences: Sequence[float], label: str = "") -> Difference:
    """A one-sample t-test over units (e.g. backbones): each unit's difference A - B is one value, so the spread
    between units holds their query, seed and backbone noise alike, whatever the seeds. se is nan under 2 units."""
    x = np.asarray(differences, dtype=float)
    if x.size < 2:
        return Difference(float(x.mean()) if x.size else math.nan, math.nan, math.nan, int(x.size), (1, 1), (), label)
    se = float(x.std(ddof=1) / math.sqrt(x.size))
    return Difference(float(x.mean()), se, float(x.size - 1), int(x.size), (1, 1), (), label)


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
    """Friedman's test that the treatments (objectives) rank alike over the blocks (e.g. backbones, each
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
