"""Teacher benchmark: scoring modes and search strategies against the synthetic latent truth.

For each configuration: accuracy and macro-F1 of every typed state against the latent truth,
beside the majority-class rate on the same users (a blind scorer shows as no better than it),
the information the teacher's distribution carries about the truth (mean log-likelihood gain
over the population prior, in nats: 0 = no better than knowing the base rates), mean scoring
calls and prompt tokens per user, and users per second. Beside them, the supervised model a
practitioner would fit instead: a logistic regression on the profile fields (one-hot
categories, standardised numbers, bags of words; the audit's ``profile_matrix``) trained on the
latent states of 7.32% of the other users (the paper's label budget; several draws) and of all
of them, scored the same way on the same users and, for a figure 48 users cannot give, on the
other users it did not see (what the profile lets any model recover). Writes JSON and prints a
table.

    .venv/bin/python benchmarks/teacher.py --users 48 --budget 12
    .venv/bin/python benchmarks/teacher.py --modes calibrated chat factored calibrated:batch \
        --strategies   # scoring modes only (greedy), MODE[:CALIBRATION][:fsK]

``:fsK`` shows the teacher K labelled users first (``teacher.few_shot``, trainers/few_shot.py):
drawn from the population outside the evaluated users and the evaluation's test split, each with
the outcome-bearing states its realised outcome implies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scaletot_features.data.io import read_table, write_json_atomic  # noqa: E402
from scaletot_features.dataset import DatasetLayout  # noqa: E402
from scaletot_features.profile import DEFAULT_PROFILE_SCHEMA  # noqa: E402
from scaletot_features.reasoning.coverage import select_coverage  # noqa: E402
from scaletot_features.reasoning.scoring import NodeScorer  # noqa: E402
from scaletot_features.reasoning.search import SearchConfig, search_chains  # noqa: E402
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX  # noqa: E402
from trainers.audit import profile_matrix  # noqa: E402
from trainers.teach import check_prompt_length  # noqa: E402

LABEL_BUDGET = 0.0732  # the paper's share of users with teacher chains
GRID_C = (0.01, 0.1, 1.0)  # inverse L2 strengths the logistic baseline chooses from


def macro_f1(pred: list[str], truth: list[str], values: list[str]) -> float:
    """Over every allowed value (a value never predicted nor true scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, labels=values, average="macro", zero_division=0))


def gain_nats(proba: np.ndarray, truth: list[str], values: list[str],
              prior: dict[str, float]) -> float:
    """Mean of log p(true value) - log p_prior(true value) over distributions [n, values],
    nats per user (p floored at 1e-6)."""
    idx = [values.index(g) for g in truth]
    p_true = np.maximum(proba[np.arange(len(idx)), idx], 1e-6)
    return float(np.mean(np.log(p_true) - np.log([prior[g] for g in truth])))


def info_gain(results, j: int, truth: list[str], prior: dict[str, float]) -> float:
    """The teacher's :func:`gain_nats` on state type ``j`` of its chains."""
    proba = np.array([r.chain.nodes[j].probs for r in results])
    return gain_nats(proba, truth, TAX.types[j].value_names, prior)


def scores(proba: np.ndarray, truth: list[str], values: list[str], prior: dict[str, float]) -> dict:
    """Accuracy, macro-F1 and information gain (nats) of predicted distributions [n, values]."""
    pred = [values[k] for k in proba.argmax(1)]
    return {"accuracy": float(np.mean([p == g for p, g in zip(pred, truth)])),
            "macro_f1": macro_f1(pred, truth, values),
            "info_gain_nats": gain_nats(proba, truth, values, prior)}


def logistic_fit(x: np.ndarray, y: list[str], values: list[str], c: float | None = None):
    """Multinomial logistic regression -> (a function giving distributions over ``values``, its
    C). A value no training row holds gets 0 (floored at 1e-6 when scored). ``c`` None: chosen
    by 3-fold CV over a coarse grid (finer grids cost minutes on 5,000 rows and moved nothing)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

    present = sorted(set(y), key=values.index)
    if len(present) == 1:
        def constant(x_test: np.ndarray) -> np.ndarray:
            out = np.zeros((len(x_test), len(values)))
            out[:, values.index(present[0])] = 1.0
            return out
        return constant, c
    if c is None and min(np.unique(y, return_counts=True)[1]) >= 3:
        model = LogisticRegressionCV(Cs=list(GRID_C), cv=3, max_iter=2000, scoring="neg_log_loss",
                                     l1_ratios=(0.0,), use_legacy_attributes=False).fit(x, y)
    else:
        model = LogisticRegression(C=c or 1.0, max_iter=2000).fit(x, y)
    cols = [values.index(k) for k in model.classes_]

    def predict(x_test: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x_test), len(values)))
        out[:, cols] = model.predict_proba(x_test)
        return out
    return predict, float(np.atleast_1d(model.C_ if hasattr(model, "C_") else model.C)[0])


def supervised_baselines(x_others: np.ndarray, x_covered: np.ndarray,
                         truth_others: dict[str, list[str]], truth: dict[str, list[str]],
                         prior: dict[str, dict[str, float]], draws: int, seed: int = 0) -> list[dict]:
    """The logistic regression on the profile at the paper's label budget (``draws`` random
    7.32% draws of the other users, mean and sd) and on all of them, scored on the covered users
    (``covered``) and on other users outside its training rows (``held_out``: the rest of the
    population for a 7.32% draw; 5-fold cross-fitting, at the C chosen on all rows, for all
    labels)."""
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(seed)
    n = len(x_others)
    k = max(2, round(LABEL_BUDGET * n))
    rows = []
    for share, label in ((LABEL_BUDGET, f"{LABEL_BUDGET:.2%}"), (1.0, "100%")):
        per_draw: list[dict] = []
        for _ in range(draws if share < 1 else 1):
            run: dict = {"covered": {}, "held_out": {}}
            train = rng.choice(n, size=k, replace=False) if share < 1 else np.arange(n)
            for t in TAX.type_names:
                values = TAX[t].value_names
                y = np.array(truth_others[t])
                fitted, c = logistic_fit(x_others[train], list(y[train]), values)
                run["covered"][t] = scores(fitted(x_covered), truth[t], values, prior[t])
                if share < 1:
                    test = np.setdiff1d(np.arange(n), train)
                    held = fitted(x_others[test])
                else:
                    test = np.arange(n)
                    held = np.zeros((n, len(values)))
                    for tr, te in KFold(5, shuffle=True, random_state=seed).split(x_others):
                        held[te] = logistic_fit(x_others[tr], list(y[tr]), values, c)[0](x_others[te])
                run["held_out"][t] = scores(held, list(y[test]), values, prior[t])
            per_draw.append(run)
        row: dict = {"scoring": f"logistic {label}", "calibration": "-", "few_shot": 0,
                     "search": "-", "labels": int(k if share < 1 else n), "draws": len(per_draw)}
        for where in ("covered", "held_out"):
            for metric in ("accuracy", "macro_f1", "info_gain_nats"):
                vals = {t: [r[where][t][metric] for r in per_draw] for t in TAX.type_names}
                key = metric if where == "covered" else f"held_out_{metric}"
                row[key] = {t: float(np.mean(v)) for t, v in vals.items()}
                row[f"{key}_sd"] = {t: float(np.std(v)) for t, v in vals.items()}
        row["mean_accuracy"] = float(np.mean(list(row["accuracy"].values())))
        rows.append(row)
    return rows


def demonstrations(data: Path, mode: str, k: int, covered: np.ndarray) -> str:
    """The few-shot block ``teach`` would show with ``teacher.few_shot: k`` on this dataset."""
    from scaletot_features.config import build_settings
    from trainers.few_shot import demonstrations_text

    settings = build_settings("tiny", {"teacher": {"scoring": mode, "few_shot": k}})
    return demonstrations_text(data, settings, covered)


def parse_spec(spec: str) -> tuple[str, str | None, int]:
    """MODE[:CALIBRATION][:fsK] -> (mode, calibration or None, K)."""
    parts = spec.split(":")
    shots = int(parts.pop()[2:]) if len(parts) > 1 and parts[-1].startswith("fs") else 0
    return parts[0], (parts[1] if len(parts) > 1 else None), shots


def evaluate(backend, spec: str, cfg: SearchConfig, texts: list[str], truth: dict[str, list[str]],
             prior: dict[str, dict[str, float]], sample: list[str], batch: int,
             demos: str = "") -> dict:
    mode, calibration, shots = parse_spec(spec)
    scorer = NodeScorer(backend, TAX, mode, calibration, demos)
    check_prompt_length(scorer, backend, texts, TAX, backend.max_length)
    scorer.prime(sample)  # per-taxonomy cost, not per user
    before = backend.usage.snapshot()
    t0 = time.perf_counter()
    results = []
    for i in range(0, len(texts), batch):
        results += search_chains(texts[i:i + batch], scorer, TAX, cfg, model_id=backend.model_id)
    seconds = time.perf_counter() - t0
    used = backend.usage.snapshot() - before
    acc, f1, gain = {}, {}, {}
    for j, t in enumerate(TAX.type_names):
        pred = [r.chain.nodes[j].value for r in results]
        acc[t] = float(np.mean([p == g for p, g in zip(pred, truth[t])]))
        f1[t] = macro_f1(pred, truth[t], TAX[t].value_names)
        gain[t] = info_gain(results, j, truth[t], prior[t])
    return {
        "scoring": mode, "calibration": scorer.calibration, "few_shot": shots,
        "search": cfg.strategy,
        "tau": cfg.tau, "width": cfg.width, "max_expansions": cfg.max_expansions,
        "users": len(texts), "accuracy": acc, "mean_accuracy": float(np.mean(list(acc.values()))),
        "macro_f1": f1, "info_gain_nats": gain,
        "mean_scoring_calls": float(np.mean([r.expansions for r in results])),
        "max_scoring_calls": int(max(r.expansions for r in results)),
        "mean_prompt_tokens": used.prompt_tokens / len(texts),
        "users_per_s": len(texts) / seconds, "seconds": seconds,
        "mean_branched_nodes": float(np.mean([r.branched_nodes for r in results])),
        "_results": results,  # dropped before writing JSON
    }


ARMS = (("one_at_a_time", "one request at a time, no KV reuse"),
        ("prefix_reuse", "one at a time, prompt-prefix KV reuse"),
        ("batched", "batched requests + KV reuse (default)"))


def before_after(backend, spec: str, cfg: SearchConfig, texts, truth, prior, sample,
                 batch: int) -> dict:
    """The same configuration on the backend's three paths, run back to back: one request at a
    time without KV reuse (``prefix_cache_size=0, batch_requests=False``), with the prompt-prefix
    reuse, and with the requests of a depth batched (the default). Users/s, prompt tokens per
    user, the load average around each, and whether the chains equal the first arm's."""
    runs = {}
    size = backend.prefix_cache_size
    for name, _ in ARMS:
        backend.prefix_cache_size = 0 if name == "one_at_a_time" else size
        backend.batch_requests = name == "batched"
        backend.clear_prefix_cache()
        load = os.getloadavg()[0]
        runs[name] = evaluate(backend, spec, cfg, texts, truth, prior, sample, batch)
        runs[name]["load_average_1min"] = [load, os.getloadavg()[0]]
    backend.prefix_cache_size, backend.batch_requests = size, True
    ref = runs["one_at_a_time"]["_results"]
    for name, _ in ARMS:
        got = runs[name]["_results"]
        runs[name]["speedup"] = runs[name]["users_per_s"] / runs["one_at_a_time"]["users_per_s"]
        runs[name]["token_ratio"] = (runs["one_at_a_time"]["mean_prompt_tokens"]
                                     / max(runs[name]["mean_prompt_tokens"], 1e-9))
        runs[name]["same_chains"] = float(np.mean([a.chain.to_text() == b.chain.to_text()
                                                   for a, b in zip(ref, got)]))
        runs[name]["max_abs_prob_diff"] = float(max(
            np.abs(np.subtract(x.probs, y.probs)).max()
            for a, b in zip(ref, got) for x, y in zip(a.chain.nodes, b.chain.nodes)))
    for name, _ in ARMS:
        runs[name].pop("_results")
    return {"spec": spec, "search": cfg.strategy, "arms": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="dataset directory (default: generate one)")
    ap.add_argument("--population", type=int, default=5_000)
    ap.add_argument("--users", type=int, default=48, help="covered users evaluated")
    ap.add_argument("--model", default="packaged")
    ap.add_argument("--budget", type=int, default=12, help="max scoring calls per user")
    ap.add_argument("--width", type=int, default=2)
    ap.add_argument("--tau", type=float, default=0.7)
    ap.add_argument("--modes", nargs="*", default=["label", "calibrated", "channel", "chat",
                                                   "factored"],
                    help="MODE[:CALIBRATION][:fsK]; none with --no-strategies: baselines only")
    ap.add_argument("--draws", type=int, default=5,
                    help="random 7.32%% label draws for the supervised baseline")
    ap.add_argument("--calibration-sample", type=int, default=32,
                    help="population profiles (not evaluated) for batch calibration")
    ap.add_argument("--no-strategies", action="store_true", help="skip the search comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--search-mode", default="calibrated", help="mode used to compare strategies")
    ap.add_argument("--batch", type=int, default=32,
                    help="users searched together (teach: teacher.checkpoint_every)")
    ap.add_argument("--before-after", action="store_true",
                    help="also run --search-mode with entropy search one request at a time, "
                    "with prompt-prefix KV reuse, and batched, side by side")
    ap.add_argument("--prefix-cache-mb", type=float, default=None,
                    help="teacher.prefix_cache_mb (default: the config's)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "teacher.json")
    args = ap.parse_args()

    from scaletot_features.data.synthetic import generate_population
    from scaletot_features.llm.hf import TransformersBackend

    tmp = tempfile.TemporaryDirectory()
    data = args.data
    if data is None:
        data = Path(tmp.name) / "data"
        generate_population(data, users=args.population, seed=0, chunk_size=5_000, progress=False)
    layout = DatasetLayout(data)
    chosen = select_coverage(layout.profiles, DEFAULT_PROFILE_SCHEMA, max_users=args.users)
    ids = chosen.column("user_id")
    population = read_table(layout.profiles)
    profiles = population.filter(pc.is_in(population.column("user_id"), value_set=ids)).sort_by("user_id")
    latent = read_table(layout.latent)
    prior = {t: {v: max(float(np.mean([g == v for g in latent.column(t).to_pylist()])), 1e-6)
                 for v in TAX[t].value_names} for t in TAX.type_names}
    others = population.filter(pc.invert(pc.is_in(population.column("user_id"), value_set=ids)))
    step = max(1, others.num_rows // args.calibration_sample)
    sample = [DEFAULT_PROFILE_SCHEMA.to_text(r)
              for r in others.take(list(range(0, others.num_rows, step))[:args.calibration_sample]).to_pylist()]
    latent = latent.filter(pc.is_in(latent.column("user_id"), value_set=ids)).sort_by("user_id")
    texts = [DEFAULT_PROFILE_SCHEMA.to_text(r) for r in profiles.to_pylist()]
    truth = {t: latent.column(t).to_pylist() for t in TAX.type_names}
    majority = {t: max(np.mean([g == v for g in truth[t]]) for v in TAX[t].value_names)
                for t in TAX.type_names}
    console = Console(width=max(Console().width, 170))
    console.print(f"[dim]supervised baselines ({args.draws} draws of {LABEL_BUDGET:.2%}, and all "
                  f"{others.num_rows} other users) ...[/]")
    others = others.sort_by("user_id")
    x = profile_matrix(others.to_pylist() + profiles.to_pylist(), DEFAULT_PROFILE_SCHEMA)
    latent_all = read_table(layout.latent)
    latent_others = latent_all.filter(pc.is_in(latent_all.column("user_id"),
                                               value_set=others.column("user_id"))).sort_by("user_id")
    truth_others = {t: latent_others.column(t).to_pylist() for t in TAX.type_names}
    held_majority = {t: max(np.mean([g == v for g in truth_others[t]]) for v in TAX[t].value_names)
                     for t in TAX.type_names}
    baselines = supervised_baselines(x[:others.num_rows], x[others.num_rows:], truth_others,
                                     truth, prior, args.draws)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from scaletot_features.config import TeacherConfig

    defaults = TeacherConfig()
    cache_mb = args.prefix_cache_mb or defaults.prefix_cache_mb
    # As teach builds it: a prompt longer than max_prompt_tokens is refused, never cut (a cut
    # few-shot block loses its start, and with it every prompt's shared prefix).
    backend = None
    if args.modes or not args.no_strategies or args.before_after:
        backend = TransformersBackend(args.model, prefix_cache_mb=cache_mb,
                                      max_length=defaults.max_prompt_tokens,
                                      batch_tokens=defaults.batch_tokens)
    runs = []

    def payload(compared: dict | None = None) -> dict:
        rows = [{k: v for k, v in r.items() if k != "_results"} for r in runs]
        return {"model": backend.model_id if backend else None, "users": len(texts),
                "population": population.num_rows,
                "majority_rate": majority, "prefix_cache_mb": cache_mb,
                "mean_majority_rate": float(np.mean(list(majority.values()))), "runs": rows,
                "baselines": baselines, "held_out_users": others.num_rows,
                "held_out_majority_rate": held_majority, "before_after": compared}
    write_json_atomic(payload(), args.out)
    greedy = SearchConfig("greedy", tau=args.tau, width=args.width, max_expansions=args.budget)
    for mode in args.modes:
        console.print(f"[dim]scoring={mode} search=greedy ...[/]")
        _, _, shots = parse_spec(mode)
        demos = demonstrations(data, parse_spec(mode)[0], shots, ids.to_numpy()) if shots else ""
        runs.append(evaluate(backend, mode, greedy, texts, truth, prior, sample, args.batch,
                             demos))
        write_json_atomic(payload(), args.out)  # a stopped run keeps its finished arms
    for strategy in () if args.no_strategies else ("entropy", "beam"):
        cfg = SearchConfig(strategy, tau=args.tau, width=args.width, max_expansions=args.budget)
        console.print(f"[dim]scoring={args.search_mode} search={strategy} ...[/]")
        runs.append(evaluate(backend, args.search_mode, cfg, texts, truth, prior, sample, args.batch))
        write_json_atomic(payload(), args.out)

    compared = None
    if args.before_after:
        cfg = SearchConfig("entropy", tau=args.tau, width=args.width, max_expansions=args.budget)
        console.print(f"[dim]before/after: {args.search_mode} entropy, one at a time / KV reuse / batched ...[/]")
        compared = before_after(backend, args.search_mode, cfg, texts, truth, prior, sample,
                                args.batch)
    for r in runs:
        r.pop("_results", None)
    result = payload(compared)
    write_json_atomic(result, args.out)

    short = {t: t[:10] for t in TAX.type_names}
    for metric, key, fmt in (("accuracy", "accuracy", "{:.2f}"), ("macro-F1", "macro_f1", "{:.2f}"),
                             ("info gain (nats)", "info_gain_nats", "{:+.3f}")):
        model = backend.model_id if backend else "no teacher run"
        table = Table(title=f"Teacher {metric} on {len(texts)} covered users ({model})")
        for col in ["scoring", "calib.", "search", *short.values(), "mean", "calls/user",
                    "tokens/user", "users/s"]:
            table.add_column(col, justify="right")
        if key == "accuracy":
            table.add_row("majority", "-", "-", *[f"{majority[t]:.2f}" for t in TAX.type_names],
                          f"{result['mean_majority_rate']:.3f}", "-", "-", "-")
        for r in runs:
            vals = [r[key][t] for t in TAX.type_names]
            shots = f":fs{r['few_shot']}" if r.get("few_shot") else ""
            table.add_row(r["scoring"] + shots, r["calibration"], r["search"],
                          *[fmt.format(v) for v in vals],
                          fmt.format(float(np.mean(vals))), f"{r['mean_scoring_calls']:.1f}",
                          f"{r['mean_prompt_tokens']:.0f}", f"{r['users_per_s']:.2f}")
        for b in baselines:
            vals = [b[key][t] for t in TAX.type_names]
            table.add_row(f"{b['scoring']} ({b['labels']})", "-", "-",
                          *[fmt.format(v) for v in vals], fmt.format(float(np.mean(vals))),
                          "-", "-", "-")
        console.print(table)
    table = Table(title=f"What the profile lets a logistic regression recover, on the other "
                  f"{others.num_rows} users outside its training rows (accuracy / info gain)")
    for col in ["model", *short.values()]:
        table.add_column(col, justify="right")
    table.add_row("majority", *[f"{held_majority[t]:.2f}" for t in TAX.type_names])
    for b in baselines:
        table.add_row(f"{b['scoring']} ({b['labels']})",
                      *[f"{b['held_out_accuracy'][t]:.2f} / {b['held_out_info_gain_nats'][t]:+.2f}"
                        for t in TAX.type_names])
    console.print(table)
    if compared is not None:
        table = Table(title=f"Teacher throughput, {compared['spec']} + entropy search, one run")
        for col in ("path", "users/s", "speed-up", "tokens/user", "calls/user", "same chains",
                    "max |dp|", "load avg (1 min)"):
            table.add_column(col, justify="right")
        for name, label in ARMS:
            r = compared["arms"][name]
            table.add_row(label, f"{r['users_per_s']:.3f}", f"{r['speedup']:.2f}x",
                          f"{r['mean_prompt_tokens']:.0f}", f"{r['mean_scoring_calls']:.1f}",
                          f"{r['same_chains']:.0%}", f"{r['max_abs_prob_diff']:.1e}",
                          "{:.2f} -> {:.2f}".format(*r["load_average_1min"]))
        console.print(table)
    console.print(f"tau={args.tau} width={args.width} budget={args.budget}; JSON: {args.out}")


if __name__ == "__main__":
    main()
