"""Calibrate the verdict rules: simulated per-query results whose truth is known, judged by claims.decide.

Each scenario draws, per replicate, a grid of B backbones x 2 settings (one collection of Q queries each), a
reference system (bce) and two systems A1, A2 whose true difference to it is DELTA (as claim M1 names two), with
S seeds each, and asks the kit's own verdict code for each statement (beats, does not beat, no worse than,
matches) about A1 and A2 against bce. It prints, per statement and scenario, the share of each verdict, and checks
the limits the README states:

  * a statement is called "supported" when it is false in at most 5% of runs, and "contradicted" when it is true
    in at most 5% (false / true, by the true difference: beats false at DELTA <= 0, true at DELTA >= +0.03; does not
    beat the reverse; no worse than false at DELTA <= -0.03, true at DELTA >= 0; matches false at |DELTA| >= 0.03,
    true at 0);
  * "supported" or "partly" together when it is false in at most 5% (partly is a "some unit" reading); as Holm
    keeps that rate near 5% by design, this limit is read beyond sampling error: broken when a binomial test of
    the count against 5% gives p < 0.01;
  * "beats" and "does not beat" are never both supported on the same data;
  * the paper's grid (9 backbones, 3 seeds, 1,000 queries, seed sd <= 0.02, DELTA = +0.07): "beats" supported in at
    least 80% of runs; one backbone, 3 seeds, 1,000 queries, seed sd 0.01: at least 90%.

The noise model, per query q of a cell (backbone, setting), system x and seed s:
    value = base[q] + DELTA[x] + u[x, q] + e[x, s, q] + g[x, s]
  base ~ U(0.2, 0.8), shared by the systems of a cell; u ~ N(0, QUERY_SD) the system's own per-query term;
  e ~ N(0, QUERY_SD) a seed's per-query term; g ~ N(0, seed sd) a seed's shift of the whole run, the same in both
  settings (one checkpoint scores both). With QUERY_SD = 0.125, two systems' per-query difference on one seed has
  sd 0.25 (what the kit's demo cells show on SciFact). --backbone-sd adds a per-backbone spread of the true effect,
  --noisy-backbone-sd gives backbone 0 seeds that move more than the others'. Values are not clipped to [0, 1].

Commands:
  python bench/calibrate_verdicts.py                      # the full table: 360 scenarios x 200 replicates
  python bench/calibrate_verdicts.py --replicates 40 --backbones 1 --queries 300
  python bench/calibrate_verdicts.py --processes 2 --json results/calibration.json
  python bench/calibrate_verdicts.py --from-json results/calibration.json --summary-only
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import scipy.stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import claims  # noqa: E402

QUERY_SD = 0.125
STATEMENTS = list(claims.STATEMENTS)
SYSTEMS = ["a1", "a2"]
# (statement) -> (is the statement false at this delta?, is it true?)
TRUTH = {
    "beats": (lambda d: d <= 0, lambda d: d >= 0.03),
    "does not beat": (lambda d: d >= 0.03, lambda d: d <= 0),
    "no worse than": (lambda d: d <= -0.03, lambda d: d >= 0),
    "matches": (lambda d: abs(d) >= 0.03, lambda d: d == 0),
}
LIMIT = 0.05


def scenarios(backbones, seeds, queries, seed_sds, deltas):
    """Every combination; a one-seed scenario runs twice, without and with the documented --seed-sd."""
    for b, s, q, sd, delta in itertools.product(backbones, seeds, queries, seed_sds, deltas):
        yield {"backbones": b, "seeds": s, "queries": q, "seed_sd": sd, "delta": delta, "stated": None}
        if s == 1:
            yield {"backbones": b, "seeds": s, "queries": q, "seed_sd": sd, "delta": delta, "stated": claims.SEED_SD}


def simulate(scenario: dict, rng: np.random.Generator, backbone_sd: float = 0.0,
             noisy_backbone_sd: float | None = None) -> dict:
    """One replicate: {"<backbone> / <setting>": {system: [array seeds x queries]}}, as claims.as_arrays gives.
    A seed's shift moves its run in both settings alike (one checkpoint scores both); with `noisy_backbone_sd`,
    backbone 0's seeds move by that sd instead of the scenario's."""
    b, s, q = scenario["backbones"], scenario["seeds"], scenario["queries"]
    cells = {}
    for i in range(b):
        effect = scenario["delta"] + (rng.normal(0, backbone_sd) if backbone_sd else 0.0)
        sd = noisy_backbone_sd if i == 0 and noisy_backbone_sd is not None else scenario["seed_sd"]
        shifts = {x: rng.normal(0, sd, (s, 1)) if sd else 0.0 for x in ["bce", *SYSTEMS]}
        for setting in ("in-domain", "out-of-domain"):
            base = rng.uniform(0.2, 0.8, q)
            cell = {}
            for system in ["bce", *SYSTEMS]:
                own = base + (0.0 if system == "bce" else effect) + rng.normal(0, QUERY_SD, q)
                cell[system] = [own + rng.normal(0, QUERY_SD, (s, q)) + shifts[system]]
            cells[f"b{i} / {setting}"] = cell
    return cells


def judge(cells: dict, stated: float | None) -> dict:
    """Each statement's verdict on one replicate, by the kit's own code."""
    return {st: claims.decide("sim", cells, [(x, "bce", st) for x in SYSTEMS], "simulation", seed_sd=stated,
                              arrays=True).verdict for st in STATEMENTS}


def run_scenario(job) -> dict:
    scenario, replicates, seed, backbone_sd, *noisy = job
    rng = np.random.default_rng(seed)
    counts = {st: dict.fromkeys(claims.VERDICTS, 0) for st in STATEMENTS}
    both = 0
    for _ in range(replicates):
        found = judge(simulate(scenario, rng, backbone_sd, *noisy), scenario["stated"])
        for st, verdict in found.items():
            counts[st][verdict] += 1
        both += found["beats"] == found["does not beat"] == "supported"
    return {**scenario, "replicates": replicates, "counts": counts, "beats_and_not": both}


def violations(row: dict) -> list[str]:
    """The limits this scenario breaks, in words."""
    out, n, delta = [], row["replicates"], row["delta"]
    for st, (false, true) in TRUTH.items():
        share = {v: c / n for v, c in row["counts"][st].items()}
        if false(delta) and share["supported"] > LIMIT:
            out.append(f"{st}: supported in {share['supported']:.1%} while false")
        some = row["counts"][st]["supported"] + row["counts"][st]["partly"]
        if false(delta) and scipy.stats.binom.sf(some - 1, n, LIMIT) < 0.01:  # above 5% beyond sampling error
            out.append(f"{st}: supported or partly in {some / n:.1%} while false")
        if true(delta) and share["contradicted"] > LIMIT:
            out.append(f"{st}: contradicted in {share['contradicted']:.1%} while true")
    if row["beats_and_not"]:
        out.append(f"beats and does not beat both supported in {row['beats_and_not']} runs")
    beats = row["counts"]["beats"]["supported"] / n
    if (row["backbones"], row["seeds"], row["queries"]) == (9, 3, 1000) and row["seed_sd"] <= 0.02 \
            and delta == 0.07 and beats < 0.80:
        out.append(f"paper grid: beats supported in {beats:.1%} < 80%")
    if (row["backbones"], row["seeds"], row["queries"], row["seed_sd"], delta) == (1, 3, 1000, 0.01, 0.07) \
            and beats < 0.90:
        out.append(f"one backbone: beats supported in {beats:.1%} < 90%")
    return out


def table(rows: list[dict]) -> str:
    """One line per scenario and statement: the share of each verdict."""
    head = "| B | seeds | queries | seed sd | stated | Δ | statement | supported | partly | contradicted | " \
           "inconclusive | limits |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        broken = violations(row)
        for st in STATEMENTS:
            share = [f"{row['counts'][st][v] / row['replicates']:.1%}" for v in claims.VERDICTS]
            mine = [b for b in broken if b.startswith(st + ":") or (st == "beats" and b.split(":")[0] not in STATEMENTS)]
            lines.append(f"| {row['backbones']} | {row['seeds']} | {row['queries']} | {row['seed_sd']} | "
                         f"{row['stated'] if row['stated'] is not None else '–'} | {row['delta']:+.3f} | {st} | "
                         + " | ".join(share) + f" | {'; '.join(mine) or 'met'} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """The worst share of each wrong verdict over every scenario, then how often "beats" is supported when true."""
    lines = ["| statement | supported while false: worst scenario | contradicted while true: worst scenario | "
             "supported or partly while false: worst |", "|---|---|---|---|"]
    def name(row):
        stated = f", --seed-sd {row['stated']}" if row["stated"] is not None else ""
        return (f"{row['backbones']} bb, {row['seeds']} seed{'s' if row['seeds'] > 1 else ''}, {row['queries']} q, "
                f"seed sd {row['seed_sd']}{stated}, Δ {row['delta']:+.3f}")
    for st, (false, true) in TRUTH.items():
        worst = []
        for kinds, when in ((["supported"], false), (["contradicted"], true), (["supported", "partly"], false)):
            found = [(sum(r["counts"][st][k] for k in kinds) / r["replicates"], name(r)) for r in rows
                     if when(r["delta"])]
            share, where = max(found, default=(0.0, "–"))
            worst.append(f"{share:.1%} ({where})" if share else "0.0% (in every scenario)")
        lines.append(f"| {st} | {worst[0]} | {worst[1]} | {worst[2]} |")
    both = sum(r["beats_and_not"] for r in rows)
    lines.append(f"\n'beats' and 'does not beat' both supported: {both} times in {sum(r['replicates'] for r in rows)} "
                 f"runs.\n")
    deltas = sorted({r["delta"] for r in rows if r["delta"] > 0.01})
    lines += ["| backbones | seeds | queries | --seed-sd | " + " | ".join(f"beats supported at Δ {d:+.2f}"
                                                                        for d in deltas) + " |",
              "|---|---|---|---|" + "---|" * len(deltas)]
    worst_sd = max(r["seed_sd"] for r in rows)
    keys = dict.fromkeys((r["backbones"], r["seeds"], r["queries"], r["stated"]) for r in rows)
    for b, s, q, stated in keys:
        cells = []
        for d in deltas:
            found = [r for r in rows if (r["backbones"], r["seeds"], r["queries"], r["stated"], r["delta"],
                                         r["seed_sd"]) == (b, s, q, stated, d, worst_sd)]
            cells.append(f"{found[0]['counts']['beats']['supported'] / found[0]['replicates']:.0%}" if found else "–")
        lines.append(f"| {b} | {s} | {q} | {stated if stated is not None else '–'} | " + " | ".join(cells) + " |")
    lines.append(f"\n(power at the largest seed sd simulated, {worst_sd})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Calibrate the verdict rules: simulated per-query results whose "
                                                 "truth is known, judged by claims.decide.")
    parser.add_argument("--backbones", type=int, nargs="+", default=[1, 9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--queries", type=int, nargs="+", default=[300, 1000, 7000],
                        help="queries per setting (one collection each)")
    parser.add_argument("--seed-sds", type=float, nargs="+", default=[0.0, 0.01, 0.02])
    parser.add_argument("--deltas", type=float, nargs="+", default=[-0.03, 0.0, 0.005, 0.03, 0.07])
    parser.add_argument("--backbone-sd", type=float, default=0.0, help="spread of the true effect over backbones")
    parser.add_argument("--noisy-backbone-sd", type=float, help="seed sd of backbone 0 (the others: the scenario's)")
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--json", help="also write every scenario's counts to this file")
    parser.add_argument("--from-json", help="print the tables of a run saved with --json, without simulating")
    parser.add_argument("--summary-only", action="store_true", help="print the summary, not the full table")
    args = parser.parse_args(argv)
    if args.from_json:
        return report(json.loads(Path(args.from_json).read_text()), args.summary_only)
    jobs = [(sc, args.replicates, 1000 + i, args.backbone_sd, args.noisy_backbone_sd)
            for i, sc in enumerate(scenarios(args.backbones, args.seeds, args.queries, args.seed_sds, args.deltas))]
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a convenience
        def tqdm(x, **_):
            return x
    if args.processes > 1:
        import multiprocessing
        with multiprocessing.Pool(args.processes) as pool:
            rows = list(tqdm(pool.imap(run_scenario, jobs), total=len(jobs), desc="scenarios", file=sys.stderr))
    else:
        rows = [run_scenario(job) for job in tqdm(jobs, desc="scenarios", file=sys.stderr)]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([{**row, "backbone_sd": args.backbone_sd} for row in rows], indent=1))
    return report([{**row, "backbone_sd": args.backbone_sd} for row in rows], args.summary_only)


def report(rows: list[dict], summary_only: bool) -> int:
    """Print the tables and whether every limit holds; exit status 1 when one does not."""
    print(summary(rows) if summary_only else table(rows) + "\n\n" + summary(rows))
    broken = [(row, v) for row in rows for v in violations(row)]
    replicates = sorted({row["replicates"] for row in rows})
    print(f"\n{len(rows)} scenarios x {'/'.join(map(str, replicates))} replicates, alpha {claims.ALPHA}, margin "
          f"{claims.MARGIN}, query sd {QUERY_SD} per term, backbone sd {rows[0].get('backbone_sd', 0.0) if rows else 0}: "
          + ("every limit met" if not broken else f"{len(broken)} limits broken"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
