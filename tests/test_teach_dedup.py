"""Repeated profiles in the teacher stage: identical profile texts searched once per run
(``teacher.dedup``), and the content-addressed chain cache across runs (``teacher.chain_cache``).

Real components throughout: the tiny random Llama behind the transformers backend, the real
scorer, search and teach stage; the population is the tiny synthetic one with half of its users
given one of three other users' profile fields, so that covered users share texts.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import requires_ray
from conftest_llm import LOGPROB_RTOL

from scaletot_features.config import build_settings
from scaletot_features.data.io import parquet_files, read_table, write_parquet_atomic
from scaletot_features.dataset import (
    TEACHER_COST_COLUMNS, DatasetLayout, evidence_column, part_file, prob_column, probs_column,
)
from scaletot_features.llm.hf import TransformersBackend
from trainers.teach import (
    _profile_rows, clear_teacher_output, load_chains, teach, teach_report, teacher_layout,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COVERED = 40


def _settings(covered: int = COVERED, **teacher):
    teacher = {"model": "tiny-random", "checkpoint_every": 8, "scoring": "calibrated", **teacher}
    # One stratum per channel: the copied users' channels get most seats, so texts repeat.
    coverage = {"max_users": covered, "strata": ["acquisition_channel"]}
    return build_settings("tiny", {"coverage": coverage, "teacher": teacher})


@pytest.fixture
def repeated_population(population_copy) -> Path:
    """Three users in four take the profile fields of one of three others (own id and timestamp
    kept): most covered users share one of three texts, the rest have their own."""
    profiles = DatasetLayout(population_copy).profiles
    table = read_table(profiles).sort_by("user_id")
    source = [i if i % 4 == 0 else 4 * (i % 3) for i in range(table.num_rows)]
    copied = table.take(source)
    for name in ("user_id", "event_timestamp"):
        copied = copied.set_column(copied.schema.get_field_index(name), name, table.column(name))
    for f in parquet_files(profiles):
        f.unlink()
    write_parquet_atomic(copied, part_file(profiles, 0))
    return population_copy


def _copy(data_dir: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(data_dir, dst)
    return dst


def _texts(data_dir: Path, settings) -> dict[int, str]:
    covered = pq.read_table(teacher_layout(data_dir).coverage).column("user_id")
    schema = settings.profile_schema()
    return {r["user_id"]: schema.to_text(r, settings.teacher.profile_style)
            for r in _profile_rows(data_dir, covered)}


def _calibration_calls(data_dir: Path) -> int:
    """The calibration's backend calls, summed over the runs since the last overwrite."""
    path = teacher_layout(data_dir).calibration
    return json.loads(path.read_text())["scoring_calls"] if path.exists() else 0


def _run(data_dir: Path, settings, backend: TransformersBackend):
    """One teach run on a cold backend; returns (summary, backend calls spent on users, tokens):
    the backend's usage counters, less what this run's calibration spent."""
    backend.clear_prefix_cache()
    before, calibration = backend.usage.snapshot(), _calibration_calls(data_dir)
    summary = teach(data_dir, settings, backend=backend, progress=False)
    used = backend.usage.snapshot() - before
    return (summary, used.scoring_calls - (_calibration_calls(data_dir) - calibration),
            used.prompt_tokens)


def _by_user(data_dir: Path) -> dict[int, dict]:
    return {r["user_id"]: r for r in load_chains(data_dir).to_pylist()}


def _assert_same_chains(got: dict[int, dict], want: dict[int, dict], taxonomy, exact=False):
    assert sorted(got) == sorted(want)
    for u in want:
        g, w = got[u], want[u]
        assert g["chain_text"] == w["chain_text"]
        for t in taxonomy.type_names:
            assert g[t] == w[t], (u, t)  # values: exact
            for col in (prob_column(t), probs_column(t)):
                if exact:
                    assert g[col] == w[col]
                else:  # fp32 kernels on other batch shapes: relative, with a tiny floor
                    np.testing.assert_allclose(g[col], w[col], rtol=LOGPROB_RTOL, atol=1e-9)


@pytest.mark.parametrize("scoring,calibration,search,covered", [
    ("calibrated", "batch", "entropy", COVERED),
    ("calibrated", "content_free", "entropy", COVERED),
    ("channel", None, "greedy", 24),  # batched across users: other batch shapes with dedup
])
def test_dedup_gives_every_user_the_chain_it_would_have_had(
        repeated_population, tmp_path, tiny_backend, scoring, calibration, search, covered):
    off_dir = _copy(repeated_population, tmp_path, "off")
    on_dir = _copy(repeated_population, tmp_path, "on")
    common = {"covered": covered, "scoring": scoring, "calibration": calibration,
              "search": search, "chain_cache": False}
    s_off, s_on = _settings(dedup=False, **common), _settings(dedup=True, **common)
    off, off_calls, off_tokens = _run(off_dir, s_off, tiny_backend)
    on, on_calls, on_tokens = _run(on_dir, s_on, tiny_backend)

    texts = _texts(on_dir, s_on)
    assert texts == _texts(off_dir, s_off)  # same coverage, same texts
    distinct = len(set(texts.values()))
    assert covered - distinct >= covered // 4, "the covered users should repeat texts"
    assert off.written == on.written == covered and off.failed == on.failed == 0
    assert (off.computed, off.reused, off.cache_hits) == (covered, 0, 0)
    assert (on.computed, on.reused, on.cache_hits) == (distinct, covered - distinct, 0)
    # Calibration (batch: over a sample of the coverage, duplicates and all) is the same work
    # either way, so the chains are too.
    assert _calibration_calls(on_dir) == _calibration_calls(off_dir)
    tax = s_on.taxonomy()
    chains_on, chains_off = _by_user(on_dir), _by_user(off_dir)
    _assert_same_chains(chains_on, chains_off, tax)

    # Fewer backend calls and tokens, and the accounting adds up without double counting.
    assert on_tokens < off_tokens
    if scoring == "calibrated":  # one backend call per scoring call (channel batches them)
        assert on_calls < off_calls
        assert (on_calls, off_calls) == (on.scoring_calls, off.scoring_calls)
    for d, summary in ((on_dir, on), (off_dir, off)):
        rows = load_chains(d)
        assert pc.sum(rows.column("scoring_calls")).as_py() == summary.scoring_calls
        assert summary.computed + summary.reused == summary.written + summary.failed
    assert on.scoring_calls_per_user < on.scoring_calls_per_computed
    assert off.scoring_calls_per_user == off.scoring_calls_per_computed

    # Every user has its own row; per text one row holds the cost, the others zero.
    schema = s_on.profile_schema()
    own = {r["user_id"]: r for r in _profile_rows(on_dir, load_chains(on_dir).column("user_id"))}
    per_text = collections.defaultdict(list)
    for u, row in chains_on.items():
        per_text[texts[u]].append(row)
        assert row["event_timestamp"] == own[u]["event_timestamp"]
        assert all(row[evidence_column(t)] == schema.present_fields(own[u])
                   for t in tax.type_names)
    for rows in per_text.values():
        costed = [r for r in rows if r["scoring_calls"] > 0]
        assert len(costed) == 1 and costed[0]["prompt_tokens"] > 0
        assert all(r["prompt_tokens"] == 0 and r["seconds"] == 0 for r in rows if r not in costed)
        assert len({r["logp"] for r in rows}) == 1
    report = teach_report(on_dir)
    assert report["reused"] == covered - distinct
    assert report["mean_scoring_calls"] == pytest.approx(on.scoring_calls / covered)
    assert report["mean_scoring_calls_computed"] == pytest.approx(on.scoring_calls / distinct)


def test_a_second_run_reads_cached_chains_and_searches_only_new_texts(
        repeated_population, tiny_backend):
    s = _settings()
    first, _, _ = _run(repeated_population, s, tiny_backend)
    first_rows = _by_user(repeated_population)
    first_texts = _texts(repeated_population, s)
    cache = teacher_layout(repeated_population).chain_cache
    entries = read_table(cache)
    assert entries.num_rows == first.computed == len(set(first_texts.values()))
    assert len(set(entries.column("key").to_pylist())) == entries.num_rows

    # Same configuration again (after --overwrite, which keeps the cache): nothing is searched.
    clear_teacher_output(repeated_population)
    assert cache.exists() and not teacher_layout(repeated_population).chains.exists()
    again, calls, _ = _run(repeated_population, s, tiny_backend)
    assert (again.computed, again.reused, again.cache_hits) == (0, COVERED, COVERED)
    assert again.scoring_calls == 0 and calls == 0
    second_rows = _by_user(repeated_population)
    _assert_same_chains(second_rows, first_rows, s.taxonomy(), exact=True)
    for row in second_rows.values():
        assert all(row[c] == 0 for c in TEACHER_COST_COLUMNS)
    assert read_table(cache).num_rows == entries.num_rows  # nothing added

    # An overlapping, larger coverage: only the texts not seen before are searched.
    bigger = _settings(covered=COVERED + 24)
    clear_teacher_output(repeated_population)
    grown, _, _ = _run(repeated_population, bigger, tiny_backend)
    texts = _texts(repeated_population, bigger)
    new = set(texts.values()) - set(first_texts.values())
    assert new and grown.computed == len(new)
    assert grown.cache_hits == sum(t in set(first_texts.values()) for t in texts.values())
    assert read_table(cache).num_rows == entries.num_rows + len(new)
    rows = _by_user(repeated_population)
    _assert_same_chains({u: rows[u] for u in first_rows if u in rows},
                        {u: first_rows[u] for u in first_rows if u in rows}, s.taxonomy(),
                        exact=True)


@pytest.mark.parametrize("change", [{"scoring": "label"}, {"tau": 0.2},
                                    {"profile_style": "sentences"}])
def test_a_changed_teacher_configuration_misses_the_cache(repeated_population, tiny_backend,
                                                          change):
    first, _, _ = _run(repeated_population, _settings(), tiny_backend)
    clear_teacher_output(repeated_population)
    s = _settings(**change)
    other, _, _ = _run(repeated_population, s, tiny_backend)
    assert other.cache_hits == 0
    assert other.computed == len(set(_texts(repeated_population, s).values()))
    keys = read_table(teacher_layout(repeated_population).chain_cache).column("teacher_key")
    assert len(set(keys.to_pylist())) == 2  # both configurations' entries, side by side


def test_a_shared_cache_folder_serves_another_dataset(repeated_population, tmp_path,
                                                      tiny_backend):
    shared = tmp_path / "shared_cache"
    other = _copy(repeated_population, tmp_path, "other")
    s = _settings(chain_cache=str(shared))
    first, _, _ = _run(repeated_population, s, tiny_backend)
    second, _, _ = _run(other, s, tiny_backend)
    assert first.computed > 0 and second.computed == 0 and second.cache_hits == COVERED
    assert not teacher_layout(other).chain_cache.exists()
    _assert_same_chains(_by_user(other), _by_user(repeated_population), s.taxonomy(), exact=True)


class InterruptedBackend(TransformersBackend):
    """A real backend whose process is interrupted (Ctrl-C) after some scoring calls."""

    def __init__(self, *a, interrupt_after: int, **k):
        super().__init__(*a, **k)
        self.interrupt_after = interrupt_after

    def score_continuations(self, prefix, continuations):
        if self.usage.scoring_calls >= self.interrupt_after:
            raise KeyboardInterrupt
        return super().score_continuations(prefix, continuations)

    def score_continuations_many(self, requests):
        if self.usage.scoring_calls >= self.interrupt_after:
            raise KeyboardInterrupt
        return super().score_continuations_many(requests)


def test_an_interrupted_run_resumes_with_every_user_exactly_once(repeated_population,
                                                                 tiny_backend):
    s = _settings()
    # batch calibration's scoring calls (one per sample profile and type) come first
    calibration = s.teacher.calibration_sample * len(s.taxonomy().types)
    dying = InterruptedBackend("tiny-random", device="cpu", interrupt_after=calibration + 100)
    with pytest.raises(KeyboardInterrupt):
        teach(repeated_population, s, backend=dying, progress=False)
    out = teacher_layout(repeated_population)
    done_before = read_table(out.chains).num_rows
    assert 0 < done_before < COVERED
    resumed, _, _ = _run(repeated_population, s, tiny_backend)
    assert resumed.skipped == done_before and resumed.written == COVERED - done_before
    assert resumed.cache_hits > 0  # texts the interrupted run searched, for users it did not write
    ids = read_table(out.chains).column("user_id").to_pylist()
    covered = pq.read_table(out.coverage).column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == COVERED and set(ids) == set(covered)
    keys = read_table(out.chain_cache).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == len(set(_texts(repeated_population, s).values()))
    assert not list(out.chains.glob(".*tmp*")) and not list(out.chain_cache.glob(".*tmp*"))


def test_a_kill_between_the_cache_part_and_the_chain_part_loses_nothing(repeated_population,
                                                                        tiny_backend):
    """The state such a kill leaves (the part's cache entries published, its chain rows not):
    the resumed run finds those users undone and their chains in the cache."""
    s = _settings()
    _run(repeated_population, s, tiny_backend)
    out = teacher_layout(repeated_population)
    want = _by_user(repeated_population)
    last = parquet_files(out.chains)[-1]
    lost = pq.read_table(last).column("user_id").to_pylist()
    last.unlink()
    resumed, calls, _ = _run(repeated_population, s, tiny_backend)
    assert resumed.written == len(lost) and resumed.computed == 0
    assert resumed.cache_hits == len(lost) and calls == 0
    got = _by_user(repeated_population)
    ids = read_table(out.chains).column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == COVERED
    _assert_same_chains(got, want, s.taxonomy(), exact=True)


# --------------------------------------------------------------------------- the Ray engine



@pytest.mark.slow  # local Ray start-up and two actors loading the teacher: about 40 s
@requires_ray
def test_ray_engine_writes_the_chains_the_local_engine_writes(repeated_population, tmp_path,
                                                              tiny_backend):
    import tempfile

    local_dir = _copy(repeated_population, tmp_path, "local")
    ray_dir = _copy(repeated_population, tmp_path, "ray")
    common = {"scoring": "calibrated", "calibration": "batch"}
    local, _, _ = _run(local_dir, _settings(**common), tiny_backend)
    s = _settings(engine="ray", **common)
    s.ray.tmpdir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths
    s.ray.batch_users = 5  # several batches over the two actors
    try:
        ray_run = teach(ray_dir, s, backend=tiny_backend, progress=False)
    finally:
        shutil.rmtree(s.ray.tmpdir, ignore_errors=True)
    assert ray_run.written == local.written == COVERED and ray_run.failed == 0
    texts = _texts(ray_dir, s)
    assert ray_run.computed == len(set(texts.values()))  # each distinct text searched once
    assert ray_run.computed + ray_run.reused == COVERED
    _assert_same_chains(_by_user(ray_dir), _by_user(local_dir), s.taxonomy())
    costs = load_chains(ray_dir)  # the searches' costs are the actors', once per text
    assert sum(costs.column("scoring_calls").to_pylist()) == ray_run.scoring_calls > 0
    # every search was published to the chain cache as its batch finished: a rerun searches none
    clear_teacher_output(ray_dir)
    again = teach(ray_dir, _settings(**common), backend=tiny_backend, progress=False)
    assert again.computed == 0 and again.cache_hits == COVERED


def test_ray_engine_needs_the_chain_cache(repeated_population):
    with pytest.raises(ValueError, match="teacher.chain_cache"):
        teach(repeated_population, _settings(engine="ray", chain_cache=False), progress=False)


@requires_ray
def test_ray_engine_with_nothing_to_search_starts_no_ray(tmp_path):
    """A resumed ray teach whose texts are all cached maps an empty table: nothing to do, and
    no Ray start-up (mapping zero blocks would fail inside Ray)."""
    import pyarrow as pa
    import ray

    from scaletot_features.config import RayConfig
    from scaletot_features.ray_engine import stream_map
    from trainers.teach_ray import RESULT_SCHEMA

    empty = pa.table({"key": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    assert list(stream_map(empty, lambda: None, RayConfig(tmpdir=str(tmp_path)),
                           RESULT_SCHEMA)) == []
    assert not ray.is_initialized()
