"""The teacher stage: coverage selection, then bounded ToT chains for every selected user.

Output, under ``DIR/teacher/``:

- ``coverage.parquet``: the selected users and their strata (written once, atomically);
- ``chains/part-*.parquet``: one row per finished user (chain columns, cost columns);
- ``failures/part-*.parquet``: users whose chain could not be produced or validated, with why;
- ``coverage_drift.json``: the Great Expectations check of the subset against the population.

Checkpointing: every ``checkpoint_every`` users the finished rows are written as one part, by
rename, so a part is either whole or absent. On restart the users already in a part are skipped:
a killed run loses at most the part in flight and never writes a user twice.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from scaletot_features.chain import parse_chain_values
from scaletot_features.config import Settings
from scaletot_features.data.io import (
    parquet_files, read_json, read_table, write_json_atomic, write_parquet_atomic,
)
from scaletot_features.dataset import (
    TEACHER_FAILURE_SCHEMA, DatasetLayout, TeacherLayout, part_file, teacher_chain_schema,
)
from scaletot_features.llm.backend import LLMBackend
from scaletot_features.profile import FieldKind, ProfileSchema, ProfileStyle
from scaletot_features.reasoning.coverage import population_segments, select_coverage
from scaletot_features.reasoning.scoring import NodeScorer
from scaletot_features.reasoning.search import SearchConfig, search_chain, search_chains
from scaletot_features.runtime import torch_threads
from scaletot_features.taxonomy import Taxonomy
from trainers.audit import teacher_audit


def teacher_layout(data_dir: Path) -> TeacherLayout:
    return DatasetLayout(data_dir).teacher


chain_schema = teacher_chain_schema
FAILURE_SCHEMA = TEACHER_FAILURE_SCHEMA


def _config_key(settings: Settings, taxonomy: Taxonomy) -> str:
    """What a resumed run must share with the run that wrote the existing parts."""
    t, c = settings.teacher, settings.coverage
    blob = json.dumps({"coverage": c.model_dump(mode="json"), "model": t.model,
                       "backend": t.backend, "scoring": t.scoring, "search": t.search,
                       "calibration": t.calibration, "calibration_sample": t.calibration_sample,
                       "profile_style": t.profile_style,
                       "tau": t.tau, "width": t.width, "max_expansions": t.max_expansions,
                       "taxonomy": taxonomy.fingerprint()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _done_user_ids(*dirs: Path) -> set[int]:
    done: set[int] = set()
    for d in dirs:
        if d.exists():
            for f in parquet_files(d):
                done.update(pq.read_table(f, columns=["user_id"]).column("user_id").to_pylist())
    return done


def coverage_drift(data_dir: Path, settings: Settings, selected: pa.Table) -> dict:
    """Great Expectations: KL(subset || population) per stratum and categorical profile field."""
    from validation.gate import run_suite  # lazy: Great Expectations imports slowly
    from validation.suites import coverage_drift_suite

    schema = settings.profile_schema()
    columns = list(dict.fromkeys(
        settings.coverage.strata + [f.name for f in schema.of_kind(FieldKind.categorical)]))
    population = population_segments(DatasetLayout(data_dir).profiles, schema, columns)
    subset = population.filter(pc.is_in(population.column("user_id"),
                                         value_set=selected.column("user_id")))
    suite = coverage_drift_suite(population.to_pandas(), columns, settings.validation.coverage_kl_max)
    result = run_suite(subset.to_pandas(), suite)
    report = result.to_json()
    write_json_atomic(report, teacher_layout(data_dir).drift)
    return report


def select_and_check_coverage(data_dir: Path, settings: Settings) -> pa.Table:
    """Select the coverage subset (or reuse the saved one) and run the drift check once."""
    out = teacher_layout(data_dir)
    key = _config_key(settings, settings.taxonomy())
    if out.coverage.exists():
        meta = pq.read_schema(out.coverage).metadata or {}
        if meta.get(b"scaletot_config_key", b"").decode() != key:
            raise RuntimeError(
                f"{out.root} was written with another teacher/coverage configuration; "
                "run `scaletot teach --overwrite` to start again"
            )
        return pq.read_table(out.coverage)
    c = settings.coverage
    selected = select_coverage(DatasetLayout(data_dir).profiles, settings.profile_schema(),
                               c.fraction, c.strata, c.seed, c.max_users)
    drift = coverage_drift(data_dir, settings, selected)
    if not drift["success"] and settings.validation.stop_on_coverage_drift:
        raise RuntimeError(f"coverage subset drifts from the population: see {out.drift}")
    write_parquet_atomic(selected.replace_schema_metadata({"scaletot_config_key": key}),
                         out.coverage)
    return selected


def _profile_rows(data_dir: Path, user_ids: pa.Array) -> list[dict]:
    profiles = read_table(DatasetLayout(data_dir).profiles)
    rows = profiles.filter(pc.is_in(profiles.column("user_id"), value_set=user_ids))
    return rows.sort_by("user_id").to_pylist()


def calibration_sample(data_dir: Path, schema: ProfileSchema, size: int,
                       style: ProfileStyle = "lines") -> list[str]:
    """Profile texts batch calibration averages over: ``size`` covered users evenly spaced in
    user-id order, the same for a resumed run (the whole coverage, not the users still to do)."""
    ids = sorted(pq.read_table(teacher_layout(data_dir).coverage,
                               columns=["user_id"]).column("user_id").to_pylist())
    picked = sorted({ids[i] for i in np.linspace(0, len(ids) - 1, min(size, len(ids))).astype(int)})
    return [schema.to_text(r, style) for r in _profile_rows(data_dir, pa.array(picked, pa.int64()))]


def check_teacher_model(settings: Settings) -> None:
    """Refuse, before any model is loaded (up to minutes), a model that is not installed or a
    scoring mode its tokenizer cannot serve (chat and factored need a chat template)."""
    from scaletot_features.llm.packaged import resolve_model

    t = settings.teacher
    path = resolve_model(t.model)  # not installed: FileNotFoundError with the install command
    if t.scoring in ("chat", "factored"):
        from transformers import AutoTokenizer

        if not getattr(AutoTokenizer.from_pretrained(str(path)), "chat_template", None):
            raise ValueError(f"teacher.scoring: {t.scoring!r} needs a chat template, and "
                             f"teacher.model {t.model!r} has none; use calibrated or channel")


def make_backend(settings: Settings) -> LLMBackend:
    t = settings.teacher
    if t.backend == "vllm":
        from scaletot_features.llm.vllm import VLLMBackend

        return VLLMBackend(t.model)
    from scaletot_features.llm.hf import TransformersBackend

    return TransformersBackend(t.model, batch_size=t.batch_size)


@dataclass(frozen=True)
class TeachSummary:
    selected: int
    written: int
    failed: int
    skipped: int
    seconds: float
    audit: dict = field(default_factory=dict)


def teach(
    data_dir: Path,
    settings: Settings,
    backend: LLMBackend | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TeachSummary:
    """Write a teacher chain for every covered user not yet done. ``stop_after`` is for tests."""
    data_dir = Path(data_dir)
    taxonomy = settings.taxonomy()
    schema: ProfileSchema = settings.profile_schema()
    tc = settings.teacher
    cfg = SearchConfig(strategy=tc.search, tau=tc.tau, width=tc.width,
                       max_expansions=tc.max_expansions)
    cfg.check(taxonomy)
    if backend is None:
        check_teacher_model(settings)
    out = teacher_layout(data_dir)
    selected = select_and_check_coverage(data_dir, settings)
    done = _done_user_ids(out.chains, out.failures)
    todo_ids = [u for u in selected.column("user_id").to_pylist() if u not in done]
    if stop_after is not None:
        todo_ids = todo_ids[:stop_after]
    t0 = time.perf_counter()
    written = failed = 0
    if todo_ids:
        with torch_threads(tc.torch_threads):
            written, failed = _teach_users(data_dir, todo_ids, schema, taxonomy, cfg, tc, out,
                                           backend or make_backend(settings), progress)
    seconds = time.perf_counter() - t0
    report = teacher_audit(data_dir, settings, load_chains(data_dir)) if out.chains.exists() else {}
    return TeachSummary(len(selected), written, failed, len(done), seconds, report)


def _teach_users(data_dir: Path, todo_ids: list[int], schema: ProfileSchema, taxonomy: Taxonomy,
                 cfg: SearchConfig, tc, out, backend: LLMBackend,
                 progress: bool) -> tuple[int, int]:
    """Teach ``todo_ids`` in checkpointed parts; returns (chains written, users failed)."""
    scorer = NodeScorer(backend, taxonomy, tc.scoring, tc.calibration)
    before, t_prime = backend.usage.snapshot(), time.perf_counter()
    scorer.prime(calibration_sample(data_dir, schema, tc.calibration_sample, tc.profile_style))
    _add_calibration_cost(out.calibration, time.perf_counter() - t_prime,
                          backend.usage.snapshot() - before)
    rows = _profile_rows(data_dir, pa.array(todo_ids, pa.int64()))
    out_schema = chain_schema(taxonomy)
    next_part = len(parquet_files(out.chains)) if out.chains.exists() else 0
    next_fail = len(parquet_files(out.failures)) if out.failures.exists() else 0
    written = failed = 0
    t0 = time.perf_counter()

    columns = [TextColumn("teach"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("teach", total=len(rows))
        for start in range(0, len(rows), tc.checkpoint_every):
            part_rows = rows[start:start + tc.checkpoint_every]
            good, bad = _teach_part(part_rows, schema, scorer, backend, taxonomy, cfg, tc)
            if good:
                table = pa.Table.from_pylist(good, schema=out_schema)
                write_parquet_atomic(table, part_file(out.chains, next_part))
                next_part += 1
            if bad:
                table = pa.Table.from_pylist(bad, schema=FAILURE_SCHEMA)
                write_parquet_atomic(table, part_file(out.failures, next_fail))
                next_fail += 1
            written += len(good)
            failed += len(bad)
            bar.advance(task, len(part_rows))
            if progress and not bar.console.is_terminal:  # a log gets one line per part
                done = start + len(part_rows)
                rate = done / max(time.perf_counter() - t0, 1e-9)
                bar.console.print(f"teach: {done}/{len(rows)} users, {failed} failed, "
                                  f"{rate:.2f} users/s", highlight=False)
    return written, failed


def _teach_part(rows: list[dict], schema: ProfileSchema, scorer: NodeScorer,
                backend: LLMBackend, taxonomy: Taxonomy, cfg: SearchConfig,
                tc) -> tuple[list[dict], list[dict]]:
    """Chains for one checkpoint part; a user that fails is recorded, never fatal."""
    texts = [schema.to_text(r, tc.profile_style) for r in rows]
    evidence = [tuple(schema.present_fields(r)) for r in rows]
    before = backend.usage.snapshot()
    t0 = time.perf_counter()
    try:
        results = search_chains(texts, scorer, taxonomy, cfg, evidence, backend.model_id)
    except Exception:  # noqa: BLE001 - one bad user must not sink the part: retry one by one
        results = []
        for text, ev in zip(texts, evidence):
            try:
                results.append(search_chain(text, scorer, taxonomy, cfg, ev, backend.model_id))
            except Exception as e:  # noqa: BLE001
                results.append(e)
    seconds = time.perf_counter() - t0
    tokens = (backend.usage.snapshot() - before).prompt_tokens
    calls_total = sum(r.expansions for r in results if not isinstance(r, Exception)) or 1
    good, bad = [], []
    for row, res in zip(rows, results):
        if isinstance(res, Exception):
            bad.append({"user_id": row["user_id"], "reason": f"{type(res).__name__}: {res}"})
            continue
        try:
            parse_chain_values(res.chain.to_text(), taxonomy)
        except ValueError as e:
            bad.append({"user_id": row["user_id"], "reason": f"invalid chain: {e}"})
            continue
        share = res.expansions / calls_total  # batch cost apportioned by scoring calls
        rec = res.chain.to_record()
        rec.update(user_id=row["user_id"], event_timestamp=row["event_timestamp"],
                   chain_text=res.chain.to_text(), scoring=tc.scoring, search=tc.search,
                   logp=res.logp, scoring_calls=res.expansions,
                   branched_nodes=res.branched_nodes, prompt_tokens=round(tokens * share),
                   seconds=seconds * share)
        good.append(rec)
    return good, bad


def _add_calibration_cost(path: Path, seconds: float, used) -> None:
    """Calibration runs once per run, before any user: its cost is kept apart, summed over runs."""
    cost = read_json(path) if path.exists() else {"runs": 0, "seconds": 0.0, "scoring_calls": 0,
                                                  "prompt_tokens": 0}
    cost["runs"] += 1
    cost["seconds"] += seconds
    cost["scoring_calls"] += used.scoring_calls
    cost["prompt_tokens"] += used.prompt_tokens
    write_json_atomic(cost, path)


def load_chains(data_dir: Path) -> pa.Table:
    return read_table(teacher_layout(data_dir).chains)


def teach_report(data_dir: Path) -> dict:
    """Counts and mean cost of the written chains (for the CLI and the demo)."""
    out = teacher_layout(data_dir)
    chains = load_chains(data_dir) if out.chains.exists() else None
    n = chains.num_rows if chains is not None else 0
    report = {"chains": n, "failures": len(_done_user_ids(out.failures))}
    if n:
        for c in ("scoring_calls", "prompt_tokens", "seconds"):
            report[f"mean_{c}"] = float(pc.mean(chains.column(c)).as_py())
    if out.drift.exists():
        report["coverage_drift_success"] = read_json(out.drift).get("success")
    if out.calibration.exists():
        report["calibration_seconds"] = read_json(out.calibration)["seconds"]
    return report
