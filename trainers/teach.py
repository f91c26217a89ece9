"""The teacher stage: coverage selection, then bounded ToT chains for every selected user.

Output, under ``DIR/teacher/``:

- ``coverage.parquet``: the selected users and their strata (written once, atomically);
- ``chains/part-*.parquet``: one row per finished user (chain columns, cost columns);
- ``failures/part-*.parquet``: users whose chain could not be produced or validated, with why;
- ``coverage_drift.json``: the Great Expectations check of the subset against the population;
- ``chain_cache/part-*.parquet``: chains by (profile text, teacher key), reused by later runs
  (``teacher.chain_cache``; see ``trainers/chain_cache.py``).

Repeated profiles: users whose profile text is identical are searched once per run
(``teacher.dedup``); each still gets its own row (own id, timestamp and evidence, the same
values and distributions), and a row whose chain was reused records zero cost, so the cost
columns sum to what the run spent.

Checkpointing: every ``checkpoint_every`` users the finished rows are written as one part, by
rename, so a part is either whole or absent. On restart the users already in a part are skipped:
a killed run loses at most the part in flight and never writes a user twice.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import Counter
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
    TEACHER_COST_COLUMNS, TEACHER_FAILURE_SCHEMA, DatasetLayout, TeacherLayout, evidence_column,
    hash_order, part_file, teacher_chain_schema,
)
from scaletot_features.llm.backend import BackendUsage, LLMBackend
from scaletot_features.profile import FieldKind, ProfileSchema, ProfileStyle
from scaletot_features.reasoning.coverage import population_segments, select_coverage
from scaletot_features.reasoning.scoring import NodeScorer
from scaletot_features.reasoning.search import SearchConfig, search_chain, search_chains
from scaletot_features.runtime import torch_threads
from scaletot_features.taxonomy import Taxonomy
from trainers.audit import teacher_audit
from trainers.chain_cache import ChainCache, teacher_description, teacher_key, text_key
from trainers.few_shot import demonstrations_text


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
                       "taxonomy": taxonomy.fingerprint(),
                       # only when set, so runs written before few_shot existed still resume
                       **({"few_shot": t.few_shot} if t.few_shot else {})}, sort_keys=True)
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


MIN_BATCH_CALIBRATION = 8  # fewer profiles: the mean answer is mostly these users' own answers


def calibration_sample(data_dir: Path, schema: ProfileSchema, size: int,
                       style: ProfileStyle = "lines", seed: int = 0) -> list[str]:
    """Profile texts batch calibration averages over: the first ``size`` users of the whole
    population in the seeded id-hash order. Drawn from the population, not the coverage, so
    the offsets (and with them the chain cache's teacher key) stay the same when the coverage
    grows or a run resumes, and they describe the users the teacher will serve."""
    profiles = read_table(DatasetLayout(data_dir).profiles)
    ids = profiles.column("user_id").to_numpy(zero_copy_only=False)
    picked = profiles.take(hash_order(ids, seed, "calibration")[:size]).sort_by("user_id")
    return [schema.to_text(r, style) for r in picked.to_pylist()]


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

    return TransformersBackend(t.model, batch_size=t.batch_size, max_length=t.max_prompt_tokens,
                               batch_tokens=t.batch_tokens, prefix_cache_mb=t.prefix_cache_mb)


def check_prompt_length(scorer: NodeScorer, backend: LLMBackend, texts: list[str],
                        taxonomy: Taxonomy, limit: int) -> None:
    """Refuse, before calibration, prompts the backend would have to cut: it keeps a prompt's
    last tokens, so a long few-shot block would lose its start. Checked on the longest profile
    text at the deepest node, with every earlier node at its longest value."""
    tokenize = getattr(backend, "prefix_ids", None)
    if tokenize is None or not texts or scorer.mode == "factored":
        return  # factored asks one line at a time: shorter than the whole profile
    longest = max(texts, key=len)
    values = [max(t.value_names, key=len) for t in taxonomy.types[:-1]]
    heads, conts = scorer._prompt(longest, values)
    n = max(len(tokenize(h)) for h in heads) + max(len(backend.continuation_ids(c)) for c in conts)
    if n > limit:
        cause = " (the few-shot block included: lower teacher.few_shot, or" if \
            scorer.demonstrations else " (a long profile:"
        raise ValueError(f"teacher prompts reach {n} tokens, above teacher.max_prompt_tokens="
                         f"{limit}{cause} raise teacher.max_prompt_tokens within the model's "
                         "context)")


@dataclass(frozen=True)
class TeachSummary:
    """One run of :func:`teach`. Users finished by this run: ``written + failed``, of which
    ``computed`` were searched and ``reused`` got the chain (or failure) of an identical
    profile text, searched earlier in this run or found in the chain cache (``cache_hits``);
    ``computed + reused == written + failed``. ``scoring_calls`` and ``prompt_tokens`` are what
    this run's searches spent (calibration apart, in ``calibration_cost.json``)."""

    selected: int
    written: int
    failed: int
    skipped: int
    seconds: float
    audit: dict = field(default_factory=dict)
    computed: int = 0
    reused: int = 0
    cache_hits: int = 0
    scoring_calls: int = 0
    prompt_tokens: int = 0

    @property
    def scoring_calls_per_user(self) -> float:
        """Per user finished by this run, reused users included (at zero): the amortised cost."""
        return self.scoring_calls / max(self.written + self.failed, 1)

    @property
    def scoring_calls_per_computed(self) -> float:
        """Per searched profile text, reused users not counted: the cost of one chain."""
        return self.scoring_calls / max(self.computed, 1)


def chain_cache_dir(data_dir: Path, settings: Settings) -> Path | None:
    """``teacher.chain_cache``: true = ``DIR/teacher/chain_cache``, false = None, or a folder."""
    where = settings.teacher.chain_cache
    if where is False:
        return None
    return teacher_layout(data_dir).chain_cache if where is True else Path(where).expanduser()


def clear_teacher_output(data_dir: Path) -> None:
    """What ``teach --overwrite`` discards: everything under ``DIR/teacher`` but the chain cache
    (its entries are keyed by the teacher configuration, so they never serve another one)."""
    out = teacher_layout(data_dir)
    if not out.root.exists():
        return
    for path in out.root.iterdir():
        if path != out.chain_cache:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


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
    cfg = search_config(settings)
    cfg.check(taxonomy)
    if tc.engine == "ray":
        from trainers.teach_ray import check_ray_teach

        check_ray_teach(settings)
    if backend is None:
        check_teacher_model(settings)
    out = teacher_layout(data_dir)
    selected = select_and_check_coverage(data_dir, settings)
    demonstrations = demonstrations_text(data_dir, settings,
                                         selected.column("user_id").to_numpy())
    done = _done_user_ids(out.chains, out.failures)
    todo_ids = [u for u in selected.column("user_id").to_pylist() if u not in done]
    if stop_after is not None:
        todo_ids = todo_ids[:stop_after]
    t0 = time.perf_counter()
    counts: Counter[str] = Counter()  # TeachSummary's counts of this run, zero when nothing to do
    if todo_ids:
        with torch_threads(tc.torch_threads):
            counts = _teach_users(data_dir, todo_ids, schema, taxonomy, cfg, tc, out,
                                  backend or make_backend(settings), progress,
                                  chain_cache_dir(data_dir, settings),
                                  settings if tc.engine == "ray" else None, demonstrations,
                                  settings.coverage.seed)
    seconds = time.perf_counter() - t0
    report = teacher_audit(data_dir, settings, load_chains(data_dir)) if out.chains.exists() else {}
    return TeachSummary(selected=len(selected), skipped=len(done), seconds=seconds, audit=report,
                        **{"written": 0, "failed": 0, **counts})


def search_config(settings: Settings) -> SearchConfig:
    tc = settings.teacher
    return SearchConfig(strategy=tc.search, tau=tc.tau, width=tc.width,
                        max_expansions=tc.max_expansions)


def _teach_users(data_dir: Path, todo_ids: list[int], schema: ProfileSchema, taxonomy: Taxonomy,
                 cfg: SearchConfig, tc, out, backend: LLMBackend, progress: bool,
                 cache_dir: Path | None, ray_settings: Settings | None = None,
                 demonstrations: str = "", seed: int = 0) -> Counter[str]:
    """Teach ``todo_ids`` in checkpointed parts.

    A user's chain comes from, in order: the chain cache (an earlier run), a user of this run
    with the same profile text (``teacher.dedup``), or a search. Reused rows carry zero cost, so
    the chain table's cost columns sum to what was spent. Per part the cache entries are
    published before the chain rows: a run killed between the two finds those users undone and
    their chains in the cache.

    With ``ray_settings`` (``teacher.engine: ray``) the distinct texts to search are searched
    first on Ray Data actors (:mod:`trainers.teach_ray`), each finished batch published to the
    cache; the parts are then written from those results as the local engine writes its own.

    ``demonstrations`` (``teacher.few_shot``, trainers/few_shot.py) precede every prompt."""
    scorer = NodeScorer(backend, taxonomy, tc.scoring, tc.calibration, demonstrations)
    rows = _profile_rows(data_dir, pa.array(todo_ids, pa.int64()))
    texts = [schema.to_text(r, tc.profile_style) for r in rows]
    check_prompt_length(scorer, backend, texts, taxonomy, tc.max_prompt_tokens)
    before, t_prime = backend.usage.snapshot(), time.perf_counter()
    sample = (calibration_sample(data_dir, schema, tc.calibration_sample, tc.profile_style, seed)
              if scorer.calibration == "batch" else [])
    if scorer.calibration == "batch" and len(sample) < MIN_BATCH_CALIBRATION:
        print(f"teach: warning: batch calibration averages over {len(sample)} profiles (fewer "
              f"than {MIN_BATCH_CALIBRATION}): it removes what those users share, so their "
              "states say little; raise teacher.calibration_sample or set "
              "teacher.calibration: content_free", file=sys.stderr, flush=True)
    scorer.prime(sample)
    _add_calibration_cost(out.calibration, time.perf_counter() - t_prime,
                          backend.usage.snapshot() - before)
    description = teacher_description(backend, scorer, cfg, tc.profile_style, taxonomy)
    cache = ChainCache(cache_dir, description, taxonomy) if cache_dir is not None else None
    tkey = teacher_key(description)
    keys = [text_key(tkey, t) for t in texts]
    cached = cache.lookup(keys) if cache is not None else {}
    pending = Counter(keys)  # users to come per text: its entry is dropped after the last one
    ran: dict[str, dict | str] = {}  # dedup: text key -> cache entry, or the failure's reason
    stored: set[str] = set()  # keys this run added to the cache
    out_schema = chain_schema(taxonomy)
    next_part = len(parquet_files(out.chains)) if out.chains.exists() else 0
    next_fail = len(parquet_files(out.failures)) if out.failures.exists() else 0
    counts: Counter[str] = Counter()
    t0 = time.perf_counter()
    searched_on_ray: dict[str, dict | str] = {}
    if ray_settings is not None and cache is not None:
        from trainers.teach_ray import search_on_ray

        first: list[int] = []  # the first user of each text to search, in order
        for i, k in enumerate(keys):
            if k not in cached and k not in searched_on_ray:
                searched_on_ray[k] = ""
                first.append(i)
        searched_on_ray = search_on_ray(
            ray_settings, scorer, tkey, [keys[i] for i in first], [texts[i] for i in first],
            [rows[i] for i in first], schema, cache.add,
            (lambda done, total: print(f"teach (ray): {done}/{total} texts searched",
                                       flush=True)) if progress else None)
        stored.update(k for k, v in searched_on_ray.items() if isinstance(v, dict))

    dedup = tc.dedup or ray_settings is not None  # the ray engine searches each text once
    columns = [TextColumn("teach"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("teach", total=len(rows))
        for start in range(0, len(rows), tc.checkpoint_every):
            part = range(start, min(start + tc.checkpoint_every, len(rows)))
            search: list[int] = []
            for i in part:
                if keys[i] not in cached and not (dedup and keys[i] in ran):
                    search.append(i)
                    if dedup:
                        ran[keys[i]] = ""  # claimed: a later user of this part reuses it
            if searched_on_ray:
                found, used = _taken(search, keys, searched_on_ray)
            else:
                found, used = _search_part([texts[i] for i in search],
                                           [keys[i] for i in search], tkey, schema,
                                           [rows[i] for i in search], scorer, backend, taxonomy,
                                           cfg, tc)
            searched = dict(zip(search, found))
            if dedup:
                ran.update({keys[i]: r for i, r in searched.items()})
            counts["scoring_calls"] += used.scoring_calls
            counts["prompt_tokens"] += used.prompt_tokens
            good, bad, new_entries = [], [], []
            for i in part:
                k = keys[i]
                if i in searched:
                    entry, cost = searched[i], None
                    counts["computed"] += 1
                    if isinstance(entry, dict) and k not in stored and cache is not None:
                        new_entries.append(entry)
                        stored.add(k)
                else:
                    entry, cost = (cached[k] if k in cached else ran[k]), _NO_COST
                    counts["reused"] += 1
                    counts["cache_hits"] += k in cached
                if isinstance(entry, str):
                    bad.append({"user_id": rows[i]["user_id"], "reason": entry})
                else:
                    good.append(_user_row(entry, rows[i], schema, taxonomy, cost))
                pending[k] -= 1
                if not pending[k]:
                    ran.pop(k, None)
                    cached.pop(k, None)
            if cache is not None:
                cache.add(new_entries)
            if good:
                table = pa.Table.from_pylist(good, schema=out_schema)
                write_parquet_atomic(table, part_file(out.chains, next_part))
                next_part += 1
            if bad:
                table = pa.Table.from_pylist(bad, schema=FAILURE_SCHEMA)
                write_parquet_atomic(table, part_file(out.failures, next_fail))
                next_fail += 1
            counts["written"] += len(good)
            counts["failed"] += len(bad)
            bar.advance(task, len(part))
            if progress and not bar.console.is_terminal:  # a log gets one line per part
                rate = part.stop / max(time.perf_counter() - t0, 1e-9)
                bar.console.print(f"teach: {part.stop}/{len(rows)} users, {counts['failed']} "
                                  f"failed, {counts['reused']} reused, {rate:.2f} users/s",
                                  highlight=False)
    return counts


def _taken(search: list[int], keys: list[str],
           results: dict[str, dict | str]) -> tuple[list[dict | str], BackendUsage]:
    """The Ray engine's results for a part's searches, and what they cost (from the entries)."""
    found = [results[keys[i]] for i in search]
    used = BackendUsage()
    for entry in found:
        if isinstance(entry, dict):
            used.scoring_calls += int(entry["scoring_calls"])
            used.prompt_tokens += int(entry["prompt_tokens"])
    return found, used


_NO_COST = dict.fromkeys(TEACHER_COST_COLUMNS, 0)  # a reused row: this run spent nothing on it


def _search_part(texts: list[str], keys: list[str], tkey: str, schema: ProfileSchema,
                 rows: list[dict], scorer: NodeScorer, backend: LLMBackend, taxonomy: Taxonomy,
                 cfg: SearchConfig, tc) -> tuple[list[dict | str], BackendUsage]:
    """Search one part's texts together: per text a cache entry (its cost apportioned from the
    part's by scoring calls) or why it failed; a text that fails is recorded, never fatal."""
    used = BackendUsage()
    if not texts:
        return [], used
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
    found: list[dict | str] = []
    for text, key, res in zip(texts, keys, results):
        if isinstance(res, Exception):
            found.append(f"{type(res).__name__}: {res}")
            continue
        try:
            parse_chain_values(res.chain.to_text(), taxonomy)
        except ValueError as e:
            found.append(f"invalid chain: {e}")
            continue
        share = res.expansions / calls_total  # batch cost apportioned by scoring calls
        rec = res.chain.to_record()
        rec.update(key=key, teacher_key=tkey, profile_text=text, chain_text=res.chain.to_text(),
                   scoring=tc.scoring, search=tc.search, logp=res.logp,
                   scoring_calls=res.expansions, branched_nodes=res.branched_nodes,
                   prompt_tokens=round(tokens * share), seconds=seconds * share)
        found.append(rec)
        used.scoring_calls += res.expansions
    used.prompt_tokens = tokens
    return found, used


def _user_row(entry: dict, row: dict, schema: ProfileSchema, taxonomy: Taxonomy,
              cost: dict | None) -> dict:
    """A chain row of ``row``'s user from a cache entry: its own id, timestamp and evidence (the
    fields present in its profile), and ``cost`` (None: the entry's own, for a searched user)."""
    rec = dict(entry)
    evidence = schema.present_fields(row)
    rec.update({evidence_column(t): list(evidence) for t in taxonomy.type_names})
    rec.update(user_id=row["user_id"], event_timestamp=row["event_timestamp"], **(cost or {}))
    return rec


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
    """Counts and mean cost of the written chains (for the CLI and the demo).

    ``mean_<cost>`` is over every chain row, reused ones at zero (what a covered user cost);
    ``mean_<cost>_computed`` over the rows whose chain was searched for them (what a chain
    cost); ``reused`` counts the rows that copied an identical profile's chain."""
    out = teacher_layout(data_dir)
    chains = load_chains(data_dir) if out.chains.exists() else None
    n = chains.num_rows if chains is not None else 0
    report = {"chains": n, "failures": len(_done_user_ids(out.failures))}
    if n:
        computed = chains.filter(pc.greater(chains.column("scoring_calls"), 0))
        report["reused"] = n - computed.num_rows
        for c in TEACHER_COST_COLUMNS:
            report[f"mean_{c}"] = float(pc.mean(chains.column(c)).as_py())
            if computed.num_rows:
                report[f"mean_{c}_computed"] = float(pc.mean(computed.column(c)).as_py())
    if out.drift.exists():
        report["coverage_drift_success"] = read_json(out.drift).get("success")
    if out.calibration.exists():
        report["calibration_seconds"] = read_json(out.calibration)["seconds"]
    return report
