"""Every table of the kit, built one way: console text, booktabs LaTeX, CSV and JSON.

make_table() is the one builder: a title, a header, rows of plain values or Value cells (a mean over
seeds with its std, bold when best, a dagger when significant) and a note become a Table, which
write_table() saves as name.txt, name.tex, name.csv and name.json. The scripts decide what goes in the
rows; how a table looks is decided here.

Sections, read top to bottom:
  1. the builder
  2. results tables: systems x collections, each system tested against a baseline
  3. where the tables go
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from tabulate import tabulate

import common
import paper_setup
import significance
from paper_setup import Collection


# ================================================================================================
# 1. The builder
# ================================================================================================
@dataclass(frozen=True)
class Table:
    console: str        # plain text for the terminal / logs
    latex: str          # booktabs table, ready to \input
    records: list[dict]  # one flat dict per filled cell, for CSV / JSON


class Value(NamedTuple):
    """A mean over seeds, printed with its std (when >= 2 seeds), bold when best, a dagger when significant."""
    mean: float
    std: float | None = None
    best: bool = False
    dagger: bool = False

    @classmethod
    def of(cls, seeds, **marks) -> "Value":
        seeds = np.asarray(seeds, dtype=float)
        return cls(float(seeds.mean()), float(seeds.std(ddof=1)) if len(seeds) > 1 else None, **marks)

    def console(self) -> str:
        text = f"{self.mean:.4f}" + (f" ± {self.std:.4f}" if self.std is not None else "")
        return text + ("†" if self.dagger else "") + ("*" if self.best else "")

    def latex(self, pad_dagger: bool) -> str:
        text = rf"\textbf{{{self.mean:.4f}}}" if self.best else f"{self.mean:.4f}"
        text += rf"{{\scriptsize$\pm${self.std:.4f}}}" if self.std is not None else ""
        # A column with daggers pads the others with an invisible one, so that numbers line up.
        return text + (r"$^\dagger$" if self.dagger else r"\hphantom{$^\dagger$}" if pad_dagger else "")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    # One pass, so the backslashes introduced by replacements are not escaped again.
    return re.sub(r"[\\&%$#_{}~^Δ±]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def latex_label(title: str) -> str:
    return "tab:" + (re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "results")


def make_table(title: str, head: list[str], rows: list[list], note: str, *, records: list[dict] = (),
               caption: str | None = None, label: str | None = None, align: str | None = None,
               latex_head: list[str] | None = None, latex_rows: list[list] | None = None) -> Table:
    """The one table builder. `rows` hold plain values (strings, numbers), Value cells or None (no value).

    Console: the title, a GitHub-style table and the note. LaTeX: a booktabs table whose caption is
    "title. note" unless `caption` (LaTeX already) is given; `latex_head` / `latex_rows` replace the
    header and rows where the printed table should differ from the console's (plain values are
    escaped). `records` become the CSV and JSON files."""
    def console_cell(value):
        return "–" if value is None else value.console() if isinstance(value, Value) else value

    latex_rows = rows if latex_rows is None else latex_rows
    width = len(latex_head or head)
    daggers = {k for row in latex_rows for k, v in enumerate(row) if isinstance(v, Value) and v.dagger}

    def latex_cell(k, value):
        if value is None:
            return "--"
        return value.latex(k in daggers) if isinstance(value, Value) else latex_escape(str(value))

    console = "\n".join([title, tabulate([[console_cell(v) for v in row] for row in rows], headers=head,
                                         tablefmt="github", disable_numparse=True), note])
    lines = [r"\begin{table}[t]", r"\centering",
             rf"\caption{{{caption if caption is not None else f'{latex_escape(title)}. {latex_escape(note)}'}}}",
             rf"\label{{{label or latex_label(title)}}}", rf"\begin{{tabular}}{{{align or 'l' + 'r' * (width - 1)}}}",
             r"\toprule", " & ".join(map(latex_escape, latex_head or head)) + r" \\", r"\midrule",
             *(" & ".join(latex_cell(k, v) for k, v in enumerate(row)) + r" \\" for row in latex_rows),
             r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return Table(console=console, latex="\n".join(lines) + "\n", records=list(records))


def best_per_row(rows: dict[str, dict[str, list[float]]], columns: list[str]) -> dict[tuple[str, str], Value]:
    """{(row, column): Value} of per-seed values, the best mean of each row marked (ties as printed, 4 decimals)."""
    means = {(r, c): Value.of(v) for r, row in rows.items() for c, v in row.items() if len(v)}
    best = {r: max((round(means[r, c].mean, 4) for c in columns if (r, c) in means), default=None) for r in rows}
    return {(r, c): value._replace(best=round(value.mean, 4) == best[r]) for (r, c), value in means.items()}


# ================================================================================================
# 2. Results tables: systems x collections, tested against a baseline
# ================================================================================================
def _span(counts) -> str:
    """'3' when all counts agree, else '2--5' (LaTeX en dash)."""
    lo, hi = min(counts), max(counts)
    return str(lo) if lo == hi else f"{lo}--{hi}"


def results_table(values, comparisons, *, baseline: str, measure: str, title: str,
                  alpha: float = 0.05, higher_is_better: bool = True, published: dict = {}) -> Table:
    """Format {system: {column: [value per seed]}} as console text, LaTeX and records.

    Rows keep the dict order; columns appear in order of first appearance. A cell shows the mean
    over seeds with 4 decimals, plus the sample std (ddof=1) when it has >= 2 seeds. The best
    value per column (compared as printed, so printed ties are all marked) gets a trailing "*"
    in the console and \\textbf in LaTeX. A dagger marks Holm-adjusted p < ``alpha`` in
    ``comparisons`` (output of significance.compare_to_baseline; {} for no tests); it is re-derived here so
    that the caption's alpha is the one actually applied. Rows without a test when others have one (the
    first stage) are shown for reference: not bold either. ``published``: {system: {column: mean}}, the
    paper's published means, shown in a row under the system's with the difference kit - paper.
    """
    columns = list(dict.fromkeys(c for cells in values.values() for c in cells))
    cells = {(s, c): Value.of(seeds) for s, row in values.items() for c, seeds in row.items() if len(seeds)}
    n_seeds = {(s, c): len(seeds) for s, row in values.items() for c, seeds in row.items() if len(seeds)}
    reference = [s for s in values if comparisons and s != baseline and s not in comparisons]
    compared = [s for s in values if s not in reference]
    pick = max if higher_is_better else min
    best = {c: pick(round(cells[s, c].mean, 4) for s in compared if (s, c) in cells)
            for c in columns if any((s, c) in cells for s in compared)}

    def significant(system, column):
        comp = comparisons.get(system, {}).get(column)
        return comp is not None and comp.pvalue_holm < alpha

    marked = {(s, c): v._replace(best=s in compared and round(v.mean, 4) == best[c], dagger=significant(s, c))
              for (s, c), v in cells.items()}
    rows = []
    for s in values:
        rows.append([s, *(marked.get((s, c)) for c in columns)])
        spread = {c: comp.seed_diffs for c, comp in comparisons.get(s, {}).items() if len(comp.seed_diffs) >= 2}
        if spread:  # the difference seed by seed: how much of it the seeds alone move
            rows.append([f"{s} (Δ vs {baseline} per seed)", *(f"{min(spread[c]):+.4f} to {max(spread[c]):+.4f}"
                                                           if c in spread else None for c in columns)])
        if s in published:
            paper = published[s]
            rows.append([f"{s} (paper)", *(Value(paper[c]) if c in paper else None for c in columns)])
            rows.append([f"{s} (kit - paper)", *(f"{cells[s, c].mean - paper[c]:+.4f}" if c in paper and (s, c) in cells
                                                 else None for c in columns)])

    legend = "* best per column"
    if comparisons:
        legend += (f"; † significant vs {baseline} (two-sided paired t-test over queries, with each system's "
                   f"seed-to-seed spread added when it has 2+ seeds; Holm-Bonferroni per column, alpha={alpha})")
        legend += f"; not tested (reference): {', '.join(reference)}" if reference else ""
    if published:
        legend += "; (paper): the paper's published mean of 3 seeds (no per-query values: not tested)"
    released = [s for s in values if s.startswith("model: xpmir/cross-encoder-")]
    if released:
        legend += "; model: xpmir/...: a released checkpoint, the best of the paper's 3 seeds, not their mean"
    seed_counts = list(n_seeds.values())
    caption = f"{latex_escape(title)}. {latex_escape(measure)}"
    if seed_counts and max(seed_counts) > 1:
        caption += rf", mean{{\scriptsize$\pm$}}std over {_span(seed_counts)} seeds"
    caption += ". Best value per column in bold."
    family = [sum(1 for s in comparisons if c in comparisons[s]) for c in columns]
    family = [k for k in family if k]
    if family:
        caption += (rf" $^\dagger$: significant difference from the baseline "
                    rf"{latex_escape(baseline)} by a two-sided paired t-test over queries "
                    rf"(per-query values averaged over seeds; with 2 or more seeds its standard error adds the variance of "
                    rf"each system's per-seed means) at $\alpha={alpha}$ after "
                    rf"Holm--Bonferroni correction within each column "
                    rf"(family of {_span(family)} system{'s' if max(family) > 1 else ''} compared with the baseline).")
        if reference:
            caption += f" Shown for reference, not tested: {latex_escape(', '.join(reference))}."
    if published:
        caption += (" (paper): the mean of 3 seeds published by Morand et al. (2026), not tested (its per-query "
                    "values are not published); (kit - paper): this table's mean minus it.")
    if released:
        caption += " A released xpmir/cross-encoder-* checkpoint is the best of the paper's 3 seeds, not their mean."

    # Records: untested cells (baseline, no comparison) carry None, not False.
    records = []
    for (system, column), value in cells.items():
        comp = comparisons.get(system, {}).get(column)
        records.append({"measure": measure, "system": system, "column": column, "mean": value.mean,
                        "std": value.std, "n_seeds": n_seeds[system, column],
                        **({"paper_mean": published.get(system, {}).get(column)} if published else {}),
                        "pvalue": comp.pvalue if comp else None,
                        "pvalue_holm": comp.pvalue_holm if comp else None,
                        "significant": significant(system, column) if comp else None,
                        "seed_diffs": list(comp.seed_diffs) if comp else None})
    return make_table(f"{title} — {measure}", ["system", *columns], rows, legend, records=records,
                      caption=caption, latex_head=["System", *columns])


def group_members(collections: list[Collection]) -> dict[str, list[str]]:
    """Collection names of the in-domain and out-of-domain groups (out-of-domain: every collection not
    in-domain — BEIR-13, LoTTE and Robust04 in the paper); groups without a collection are left out."""
    members = {g: [c.name for c in collections if (c.group == "in-domain") == (g == "in-domain")]
               for g in ("in-domain", "out-of-domain")}
    return {g: names for g, names in members.items() if names}


def group_means(by_collection: dict, collections: list[Collection], measure: str) -> dict[str, list[float]]:
    """Per in/out-of-domain group and seed, the mean of `measure` over the group's collections
    (by_collection: {collection: [per-seed metrics]}); a group is left out unless all were evaluated."""
    out = {}
    for group, names in group_members(collections).items():
        runs = [[m[measure] for m in by_collection.get(name, []) if measure in m] for name in names]
        if all(runs):
            out[group] = [float(np.mean([r[k] for r in runs])) for k in range(min(map(len, runs)))]
    return out


def measure_of(collection: Collection, measure: str) -> str:
    """The collection's own form of `measure`: TREC DL reports RR(rel=2)@10 where others report RR@10."""
    if measure in collection.measures:
        return measure
    base = re.sub(r"\(.*\)", "", measure)
    return next((m for m in collection.measures if re.sub(r"\(.*\)", "", m) == base), measure)


def grid_table(metrics, per_query, collections: list[Collection], measure: str, baseline: str, title: str,
               alpha: float = 0.05, averages: bool = True, published: dict = {}) -> Table:
    """One results table for `measure`: a column per collection (tested against `baseline`) and, when
    asked, the mean over each group of collections (in-domain, out-of-domain, ...) per seed. Each
    collection gives its own form of the measure (measure_of). Systems without per-query values (the
    first stage) are shown, never tested: the Holm family of a column is the trained systems compared
    with the baseline."""
    own = {c.name: measure_of(c, measure) for c in collections}
    values: dict = {}
    for system, by_collection in metrics.items():
        row = values.setdefault(system, {})
        for c in collections:
            if c.name in by_collection and own[c.name] in by_collection[c.name][0]:
                row[c.name] = [m[own[c.name]] for m in by_collection[c.name]]
        groups = dict.fromkeys(c.group for c in collections)
        for group in groups if averages and len(collections) > 1 else ():
            members = [row[c.name] for c in collections if c.group == group and c.name in row]
            if members and len(members) == sum(c.group == group for c in collections):
                seeds = min(len(m) for m in members)
                row[f"avg {group}"] = [float(np.mean([m[k] for m in members])) for k in range(seeds)]
    tested = {s: {c.name: pq[c.name] and [p[own[c.name]] for p in pq[c.name]] for c in collections
                  if c.name in pq and all(own[c.name] in p for p in pq[c.name])}  # LoTTE has no RR: no column
              for s, pq in per_query.items()}
    comparisons = significance.compare_to_baseline(tested, baseline, alpha) if baseline in tested and len(tested) > 1 else {}
    variants = {m: [c for c, o in own.items() if o == m] for m in dict.fromkeys(own.values()) if m != measure}
    label = measure + "".join(f" ({m} on {', '.join(names)})" for m, names in variants.items())
    return results_table(values, comparisons, baseline=baseline, measure=label, title=title, alpha=alpha,
                         published=published)


# ================================================================================================
# 3. Where the tables go
# ================================================================================================
@contextlib.contextmanager
def written_whole(folder: Path):
    """A folder of tables written whole or not at all: written into a folder beside it, which then takes its
    place; interrupted (Ctrl-C, a full disk), the folder keeps its earlier tables and nothing half-written."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.writing-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


def write_table(table: Table, out_dir, name: str) -> list[Path]:
    """Write name.txt, name.tex, name.csv and name.json into ``out_dir``; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    if table.records:
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in table.records for k in r)),
                                lineterminator="\n")  # records of several kinds: every field
        writer.writeheader()
        writer.writerows(table.records)  # None is written as an empty field
    texts = {"txt": table.console + "\n", "tex": table.latex, "csv": buf.getvalue(),
             "json": json.dumps(table.records, indent=2, ensure_ascii=False) + "\n"}
    paths = []
    for ext, text in texts.items():
        paths.append(out_dir / f"{name}.{ext}")
        common.atomic_write_text(paths[-1], text)
    return paths


def measure_file_name(measure: str) -> str:
    """'RR(rel=2)@10' -> 'RRrel=210': a measure as it appears in table file names."""
    return measure.replace("@", "").replace("(", "").replace(")", "")


# Options that change how a run executes, never what its tables hold.
# --unpadded and --compile are not among them: they change scores by rounding, so their tables are kept apart.
HOW_TO_RUN_OPTIONS = frozenset({"demo", "smoke", "gpu", "results", "eval_batch_size", "eval_token_budget",
                                "num_workers", "checkpoint_every", "keep_checkpoint", "plan", "slurm",
                                "slurm_options", "token_cache", "figures"})


def tables_folder(results: Path, name: str, args, mode: str, already_in_name: Sequence[str] = ()) -> Path:
    """results/tables/<name>, plus a tag of every flag the command line gave with a value that differs from
    its default under `mode` (the seeds' default depends on the mode).

    A run on one collection, other seeds or another step count otherwise writes over the tables of
    the full run; with the tag both stay (e.g. ``kd_vs_cl_demo_bf16__seeds-12-13``). A tag longer than
    60 characters becomes ``opts-<hash>``; ``options.json`` in the folder records the command and the
    changed options either way.
    """
    changed = {}
    for field in dataclasses.fields(args):
        if field.name in HOW_TO_RUN_OPTIONS or field.name in already_in_name or field.name not in args.given:
            continue
        value = getattr(args, field.name)
        if value != (paper_setup.SEEDS[mode] if field.name == "seeds" else common.field_default(field)):
            changed[field.name] = value
    parts = []
    for option, value in changed.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        parts.append("-".join([option.replace("_", "-"), *(common.slug(str(v)) for v in values)]))
    tag = "_".join(parts)
    if len(tag) > 60:
        tag = "opts-" + hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(results) / "tables" / (f"{name}__{tag}" if tag else name)
    record = {"command": [Path(sys.argv[0]).name, *sys.argv[1:]], "changed_options": changed}
    common.atomic_write_json(folder / "options.json", record)
    return folder
