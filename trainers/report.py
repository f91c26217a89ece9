"""The evaluation report: Markdown tables and PNG plots from ``DIR/eval/results.json``.

Every number here is read from the results the comparison wrote; nothing is recomputed except
the gain curves, from the saved test predictions. ``console_tables`` is what the demo prints.
Columns and plots follow the results' targets (``results["targets"]``, from ``ltv.targets``):
per target its Gini on all users and on the low-activity slice, and its AUC where its kind has
one (payer for ziln, retained for hurdle_count).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from scaletot_features.data.io import read_table
from scaletot_features.dataset import EvalLayout, prediction_column, truth_column
from scaletot_features.ltv.metrics import gain_curve

def targets_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets the results were scored on (name, kind, auc: payer | retained | None)."""
    return results["targets"]


def headline(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(slice, key) of the headline cells: per target its Gini on all users and on the
    low-activity slice, and its AUC where its kind has one."""
    cells = []
    for t in targets_of(results):
        cells += [("all", f"{t['name']}.gini"), ("low_activity", f"{t['name']}.gini")]
        if t.get("auc"):
            cells.append(("all", f"{t['name']}.auc"))
    return cells


def more_cells(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(slice, key) of rank correlation and calibration, per target and slice."""
    return [(s, f"{t['name']}.{k}") for t in targets_of(results)
            for k in ("spearman", "decile_mape") for s in ("all", "low_activity")]


METRIC_NAMES = {"gini": "Gini", "spearman": "Spearman", "decile_mape": "decile MAPE"}


def metric_name(results: dict[str, Any], key: str) -> str:
    """``lt30.gini`` -> "lt30 Gini"; an AUC by what it separates: "revenue_30 payer AUC"."""
    name, metric = key.rsplit(".", 1)
    if metric == "auc":
        auc = next(t["auc"] for t in targets_of(results) if t["name"] == name)
        return f"{name} {auc} AUC"
    return f"{name} {METRIC_NAMES[metric]}"


def _fmt(mean: float, std: float | None = None, signed: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if not std else f"{text} ± {std:.3f}"


def _rows(results: dict[str, Any], block: str) -> list[dict[str, Any]]:
    return [r for r in results["summary"] if r["block"] == block]


def _base(r: dict[str, Any], target: str) -> str:
    """The set a row's uplift on ``target`` is read against (A in results from before A-gbdt)."""
    return (r.get("uplift_base") or {}).get(target) or "A"


def _cell(r: dict[str, Any], key: str, uplift: bool = False) -> str:
    if uplift:
        if f"{key}.uplift" not in r or r["set"] == _base(r, key.split(".")[1]):
            return "-"
        return _fmt(r[f"{key}.uplift"], r[f"{key}.uplift_std"], signed=True)
    return _fmt(r[key], r.get(f"{key}.std"))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cost_cells(c: dict[str, Any]) -> list[str]:
    llm_users = c.get("teacher_users", 0) or 0
    calls = (c.get("teacher_calls", 0) or 0) + (c.get("student_calls", 0) or 0)
    tokens = (c.get("teacher_tokens", 0) or 0) + (c.get("student_tokens", 0) or 0)
    seconds = sum(float(c.get(k, 0) or 0) for k in
                  ("teacher_seconds", "student_training_seconds", "student_seconds"))
    other = sum(float(c.get(k, 0) or 0) for k in ("encoder_seconds", "sentence_model_seconds"))
    return [f"{llm_users:,}", f"{c.get('student_users', 0) or 0:,}",
            f"{calls:,}", f"{tokens:,}", f"{seconds:,.0f}", f"{other:,.1f}"]


COST_HEADER = ["feature set", "teacher users", "student users", "LLM calls", "LLM prompt tokens",
               "LLM seconds", "encoder / sentence-model seconds", "LTV fit seconds (per seed)"]


def _fit_seconds(results: dict[str, Any], key: str) -> str:
    """The LTV model's mean fit seconds of a set (its first block's), or n/a in older results."""
    row = next((r for r in results["summary"] if r["set"] == key), {})
    return f"{row['fit_seconds']:,.1f}" if "fit_seconds" in row else "n/a"


def _sample_size(results: dict[str, Any], block: str) -> str:
    r = _rows(results, block)[0]
    first = targets_of(results)[0]["name"]
    n = r[f"all.{first}.n"]
    payer = next((t["name"] for t in targets_of(results) if t.get("auc") == "payer"), None)
    if payer is None:
        return f"{n:,} test users"
    return f"{n:,} test users, {round(n * r[f'all.{payer}.positive_rate']):,} of them payers"


def _header(results: dict[str, Any], s: str, k: str) -> str:
    return f"{metric_name(results, k)} ({'low-act.' if s == 'low_activity' else 'all'})"


def comparison_markdown(results: dict[str, Any], block: str = "main",
                        cells: list[tuple[str, str]] | None = None) -> str:
    cells = headline(results) if cells is None else cells
    body = [[r["label"]] + [_cell(r, f"{s}.{k}") for s, k in cells]
            for r in _rows(results, block)]
    return _md_table(["feature set"] + [_header(results, s, k) for s, k in cells], body)


def base_note(results: dict[str, Any], block: str = "main") -> str:
    """Which profile-only row each target's uplift is read against, and why (validation Gini)."""
    rows = _rows(results, block)
    scored = {r["set"]: r for r in rows if r.get("profile_only")}
    parts = []
    for t in (t["name"] for t in targets_of(results)):
        scores = ", ".join(f"{k} {_fmt(r.get(f'validation.{t}.gini', float('nan')))}"
                           for k, r in scored.items())
        parts.append(f"{t} against {_base(rows[0], t)}"
                     + (f" (validation Gini {scores})" if len(scored) > 1 else ""))
    return ("Uplifts are read against the best profile-only row, chosen per target by the mean "
            "Gini on the validation users (the models' early-stopping slice of the training users, "
            "never the test users these uplifts are measured on; the low-activity columns use the "
            "same choice): " + "; ".join(parts) + ".")


def uplift_markdown(results: dict[str, Any], block: str = "main") -> str:
    names = [t["name"] for t in targets_of(results)]
    cells = headline(results)
    rows = [r for r in _rows(results, block) if not all(r["set"] == _base(r, t) for t in names)]
    header = ["vs best profile-only (same seeds)"] + [f"Δ {_header(results, s, k)}"
                                                      for s, k in cells]
    body = [[r["label"]] + [_cell(r, f"{s}.{k}", uplift=True) for s, k in cells] for r in rows]
    return _md_table(header, body)


def sweep_uplift(results: dict[str, Any], key: str
                 ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(coverage fractions, per slice (mean paired uplift over the best profile-only row, its
    sd)) of the sweep points."""
    pts = sorted(_rows(results, "sweep"), key=lambda r: results["costs"][r["set"]]["coverage"])
    cov = np.array([results["costs"][r["set"]]["coverage"] for r in pts])
    return cov, {s: (np.array([r[f"{s}.{key}.uplift"] for r in pts]),
                     np.array([r[f"{s}.{key}.uplift_std"] for r in pts]))
                 for s in ("all", "low_activity")}


def plot_gain_curves(results: dict[str, Any], predictions: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = read_table(predictions)
    seed = results["seeds"][0]
    names = [t["name"] for t in targets_of(results)]
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 9), squeeze=False)
    for col, target in enumerate(names):
        title = target
        for row, (slice_name, low_only) in enumerate([("all users", False),
                                                       ("low-activity slice", True)]):
            ax = axes[row][col]
            for r in _rows(results, "main"):
                sel = pc.and_(pc.and_(pc.equal(pred.column("block"), "main"),
                                      pc.equal(pred.column("set"), r["set"])),
                              pc.equal(pred.column("seed"), seed))
                if low_only:
                    sel = pc.and_(sel, pred.column("low_activity"))
                part = pred.filter(sel)
                y_true = part.column(truth_column(target)).to_numpy()
                if part.num_rows == 0 or y_true.sum() <= 0:
                    continue
                x, y = gain_curve(y_true, part.column(prediction_column(target)).to_numpy(),
                                  num_points=201)
                ax.plot(x, y, label=r["label"], lw=1.4)
            if part.num_rows and y_true.sum() > 0:
                x, y = gain_curve(y_true, y_true, num_points=201)
                ax.plot(x, y, "k:", lw=1, label="perfect ranking")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="random")
            ax.set_title(f"{title}: {slice_name} (test, seed {seed})")
            ax.set_xlabel("share of users, ranked by prediction")
            ax.set_ylabel(f"share of total {title}")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = EvalLayout(out).gain_curves
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coverage(results: dict[str, Any], out: Path) -> Path | None:
    if not any(r["block"] == "sweep" for r in results["runs"]):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t["name"] for t in targets_of(results)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], [(f"{n}.gini", f"{n} Gini") for n in names]):
        cov, series = sweep_uplift(results, key)
        for s, style in (("all", "o-"), ("low_activity", "s--")):
            m, sd = series[s]
            ax.errorbar(cov * 100, m, yerr=sd, fmt=style, capsize=3,
                        label="all users" if s == "all" else "low-activity slice")
        b = next((r for r in _rows(results, "main") if r["set"] == "B"), None)
        if b is not None:
            ax.axhline(b[f"all.{key}.uplift"], color="C2", lw=1, ls=":",
                       label="B (sentence embedding), all users")
        ax.axhline(0, color="grey", lw=0.8)
        default = results["costs"].get("C", {}).get("coverage")
        if default:
            ax.axvline(default * 100, color="grey", lw=0.8, ls="--", label="default coverage")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(cov * 100, [f"{c * 100:.3g}%" for c in cov])
        ax.set_xlabel("users the LLM reasoned about (% of population)")
        ax.set_ylabel(f"Δ {title} vs best profile-only row")
        ax.set_title(f"coverage against uplift: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = EvalLayout(out).coverage_uplift
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


STAGE_ROWS = {"C-teacher": "an encoder distilled straight from the teacher's typed-state "
                            "distributions (no student)",
              "C-SFT": "one distilled from the SFT student's chains (no OSIPO)"}


def stage_note(results: dict[str, Any]) -> list[str]:
    """What the stage-ablation rows are, when the main table has them (else nothing)."""
    present = [k for k in STAGE_ROWS if any(r["set"] == k and r["block"] == "main"
                                            for r in results["summary"])]
    if not present:
        return []
    return ["Stage ablations: " + "; ".join(f"{k} is A + {STAGE_ROWS[k]}" for k in present)
            + ". Against C (teacher, SFT and OSIPO) they show what each LLM stage adds.", ""]


def write_report(results: dict[str, Any], predictions: Path, out: Path) -> Path:
    """Write ``out/report.md`` with its PNGs (``out``: an eval folder, ``dataset.EvalLayout``);
    returns the Markdown's path."""
    gains = plot_gain_curves(results, predictions, out)
    coverage = plot_coverage(results, out)
    low = results["low_activity"]
    parts = [
        "# ScaleToT LTV evaluation",
        "",
        f"Data: `{results['data_dir']}` ({results['users']:,} labelled users; preset "
        f"`{results['preset']}`). One split: {results['test_users']:,} test users (hash of the "
        f"id, {results['split']['test_fraction']:.0%}; the {results['covered_users']:,} users "
        "the student was trained on are always in train). Low-activity slice: "
        + (f"`{low['predicate']}` ({low['test_users']:,} test users)" if low["predicate"]
           else "none (`ltv.low_activity` unset or not applicable to these columns)")
        + ". Model seeds "
        f"{results['seeds']}: cells are mean ± standard deviation over seeds; the split is fixed.",
        "",
        "## Comparison (test users)",
        "",
        comparison_markdown(results),
        "",
        *stage_note(results),
        "## Uplift over the best profile-only row, paired by seed",
        "",
        base_note(results),
        "",
        uplift_markdown(results),
        "",
        "Rank correlation and calibration (decile MAPE: mean |predicted - actual| / actual over "
        "prediction deciles, deciles with no actual value left out):",
        "",
        comparison_markdown(results, cells=more_cells(results)),
        "",
        f"![gain curves]({gains.name})",
        "",
    ]
    if coverage is not None:
        parts += ["## Coverage sweep (C refitted on encoders distilled from more or fewer users' "
                  "LLM reasoning)", "", comparison_markdown(results, "sweep"), "",
                  uplift_markdown(results, "sweep"), "", f"![coverage against uplift]({coverage.name})",
                  ""]
    if any(r["block"] == "upper_bound" for r in results["summary"]):
        n = results["upper_bound_users"]
        parts += [f"## Upper bound on a {n:,}-user sample", "",
                  f"The student LLM reasoned about {n:,} users (this preset cannot afford every "
                  "user); A, C and D are fitted and tested on that sample only: "
                  f"{_sample_size(results, 'upper_bound')}, so expect wide seed spreads and "
                  "read small differences as noise.", "",
                  comparison_markdown(results, "upper_bound"), "",
                  base_note(results, "upper_bound"), "",
                  uplift_markdown(results, "upper_bound"), ""]
    parts += ["## Cost of each feature set", "",
              _md_table(COST_HEADER, [[k] + _cost_cells(results["costs"][k])
                                      + [_fit_seconds(results, k)]
                                      for k in dict.fromkeys(r["set"] for r in results["summary"])]),
              "", "LLM seconds: teacher scoring + student training + student inference, as "
              "measured on this machine. Calls: teacher scoring calls; student: one prompt pass "
              "plus one step per state type per user.", ""]
    d = results["costs"].get("D", {})
    if d.get("all_users_estimate_seconds") and results["upper_bound_users"] < results["users"]:
        est = d["all_users_estimate_seconds"]
        parts += [f"D for all {results['users']:,} users would take about "
                  + (f"{est / 3600:,.1f} hours" if est >= 3600 else f"{est / 60:,.1f} minutes")
                  + " of student inference at the measured rate.", ""]
    parts += [f"Evaluation took {results['seconds']:.0f} s ({results['fit_seconds']:.0f} s "
              "fitting LTV models).", ""]
    path = EvalLayout(out).report
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def _short_header(results: dict[str, Any], s: str, k: str) -> str:
    """A console column: "lt30 Gini", then "low-act." beside it, "retained AUC"."""
    if s == "low_activity":
        return "low-act."
    return metric_name(results, k).split(" ", 1)[1] if k.endswith(".auc") else \
        metric_name(results, k)


def console_tables(results: dict[str, Any]) -> list[Table]:
    """The comparison, the sweep and (when separate) the upper bound, as rich tables."""
    tables = []
    cells = headline(results)
    first = f"all.{targets_of(results)[0]['name']}.gini"
    for block, title in (("main", "LTV comparison, test users (mean ± sd over seeds)"),
                         ("sweep", "coverage sweep for C"),
                         ("upper_bound", f"upper bound on a {results['upper_bound_users']:,}-user "
                                         "sample")):
        rows = _rows(results, block)
        if not rows:
            continue
        t = Table(title=f"{title} ({_sample_size(results, block)})")
        t.add_column("feature set", no_wrap=True)
        for s, k in cells:
            t.add_column(_short_header(results, s, k), justify="right", no_wrap=True)
        t.add_column(f"Δ {metric_name(results, first.split('.', 1)[1])} vs best",
                     justify="right", no_wrap=True)
        t.add_column("LLM users", justify="right", no_wrap=True)
        for r in rows:
            c = results["costs"].get(r["set"], {})
            t.add_row(r["label"], *[_cell(r, f"{s}.{k}") for s, k in cells],
                      _cell(r, first, uplift=True), f"{c.get('student_users', 0) or 0:,}")
        tables.append(t)
    return tables


def print_tables(results: dict[str, Any], console: Console) -> None:
    """Print the tables and the report's path; wide when writing to a file or pipe (no wrap)."""
    out = console if console.is_terminal else Console(file=console.file, width=200)
    for table in console_tables(results):
        out.print(table)
    out.print(f"report: {results['report']}")
