"""The teacher stage end to end: coverage, chains, costs, failures, and kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from scaletot_features.chain import parse_chain_values
from scaletot_features.config import build_settings
from scaletot_features.data.io import read_table
from trainers.teach import load_chains, teach, teacher_layout

REPO = Path(__file__).resolve().parents[1]


def _settings(**teacher):
    return build_settings("tiny", {"teacher": {"model": "tiny-random", **teacher}})


def test_teach_writes_one_valid_chain_per_covered_user(population_copy):
    s = _settings(scoring="channel", search="entropy", tau=0.5, width=2, max_expansions=8)
    summary = teach(population_copy, s, progress=False)
    out = teacher_layout(population_copy)
    covered = pq.read_table(out.coverage).column("user_id").to_pylist()
    chains = load_chains(population_copy)
    assert summary.written == chains.num_rows == len(covered) == s.coverage.max_users
    assert sorted(chains.column("user_id").to_pylist()) == sorted(covered)
    tax = s.taxonomy()
    for row in chains.to_pylist():
        parse_chain_values(row["chain_text"], tax)
        assert row["provenance"] == "teacher" and row["model_id"]
        assert 6 <= row["scoring_calls"] <= 8 and row["prompt_tokens"] > 0 and row["seconds"] > 0
        for t in tax.type_names:
            assert 0 <= row[f"{t}_prob"] <= 1 and 0 <= row[f"{t}_entropy"] <= 1
            probs = row[f"{t}_probs"]  # the full distribution is kept, in taxonomy order
            assert len(probs) == len(tax[t].values) and sum(probs) == pytest.approx(1.0)
            assert probs[tax[t].index(row[t])] == pytest.approx(row[f"{t}_prob"])
    assert out.drift.exists()
    # The audit ran on the covered users' labels, beside a cross-validated profile ridge.
    audit = json.loads((out.root / "audit.json").read_text())
    assert audit == summary.audit and audit["available"] and audit["users"] == chains.num_rows
    labels = read_table(population_copy / "labels").to_pandas().set_index("user_id").loc[covered]
    for outcome, types in tax.outcome_types.items():
        entry = audit["outcomes"][outcome]
        assert entry["label_column"] == outcome
        if labels[outcome].nunique() == 1:  # e.g. no payer among 24 users: said, not scored
            assert "same" in entry["reason"]
            continue
        assert -1 <= entry["profile_ridge_cv"] <= 1 and set(entry["states"]) == set(types)
        for m in entry["states"].values():
            assert m["spearman_expected"] is None or -1 <= m["spearman_expected"] <= 1
    # Running again does nothing: every covered user is done.
    again = teach(population_copy, s, progress=False)
    assert again.written == 0 and again.skipped == len(covered)


def test_changed_configuration_is_refused_on_resume(population_copy):
    teach(population_copy, _settings(), progress=False, stop_after=2)
    with pytest.raises(RuntimeError, match="overwrite"):
        teach(population_copy, _settings(tau=0.1), progress=False)


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(population_copy, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preset: tiny\ncoverage: {max_users: 40}\n"
                   "teacher: {model: tiny-random, checkpoint_every: 4, scoring: calibrated}\n")
    cmd = [sys.executable, "-m", "scaletot_features.cli", "teach", str(population_copy),
           "--config", str(cfg)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    chains_dir = teacher_layout(population_copy).chains
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if chains_dir.exists() and len(list(chains_dir.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stdout.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts_before = len(list(chains_dir.glob("part-*.parquet")))
    assert 2 <= parts_before < 10
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = read_table(chains_dir).column("user_id").to_pylist()
    covered = pq.read_table(teacher_layout(population_copy).coverage).column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(covered) == 40
    assert set(ids) == set(covered)
    assert not list(chains_dir.glob(".*tmp*"))


@pytest.mark.slow
def test_teach_on_the_packaged_model_tiny_preset(population_copy):
    s = build_settings("tiny")
    t0 = time.perf_counter()
    summary = teach(population_copy, s, progress=False)
    elapsed = time.perf_counter() - t0
    chains = load_chains(population_copy)
    assert summary.failed == 0 and chains.num_rows == s.coverage.max_users
    for text in chains.column("chain_text").to_pylist():
        parse_chain_values(text, s.taxonomy())
    print(f"packaged teacher, tiny preset: {chains.num_rows} users in {elapsed:.1f} s")


def test_a_user_that_fails_is_recorded_and_the_run_goes_on(population_copy, tiny_model_dir):
    """Fault injection into a real backend: the teach stage's failure handling is the subject."""
    from scaletot_features.llm.hf import TransformersBackend
    from trainers.teach import _profile_rows, select_and_check_coverage

    s = _settings(scoring="channel", checkpoint_every=6)
    covered = select_and_check_coverage(population_copy, s).column("user_id")
    victim = _profile_rows(population_copy, covered)[3]
    victim_text = s.profile_schema().to_text(victim)

    class FailsForOneUser(TransformersBackend):
        def score_pairs(self, prefixes, continuations):
            if any(c.strip() == victim_text for c in continuations):
                raise RuntimeError("device fault while scoring")
            return super().score_pairs(prefixes, continuations)

    summary = teach(population_copy, s, backend=FailsForOneUser("tiny-random"), progress=False)
    failures = read_table(teacher_layout(population_copy).failures).to_pylist()
    assert summary.failed == 1 and summary.written == covered.length() - 1
    assert failures[0]["user_id"] == victim["user_id"]
    assert "device fault" in failures[0]["reason"]
    # A rerun does not retry recorded failures silently nor duplicate anyone.
    again = teach(population_copy, s, progress=False)
    assert again.written == 0


def test_a_model_without_a_chat_template_is_refused_before_loading(population_copy, monkeypatch):
    import trainers.teach as teach_mod

    s = _settings(scoring="chat")
    monkeypatch.setattr(teach_mod, "make_backend", lambda _s: pytest.fail("model was loaded"))
    from transformers import AutoTokenizer

    real = AutoTokenizer.from_pretrained

    def no_template(*a, **k):
        tok = real(*a, **k)
        tok.chat_template = None
        return tok

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", no_template)
    with pytest.raises(ValueError, match="chat template"):
        teach(population_copy, s, progress=False)
    assert not teacher_layout(population_copy).coverage.exists()  # nothing written


def test_make_backend_takes_the_prompt_and_cache_limits_from_the_config():
    """The backend refuses (teach checks first) rather than cuts prompts past
    max_prompt_tokens, and keeps as much prompt KV cache as teacher.prefix_cache_mb allows."""
    from trainers.teach import make_backend

    backend = make_backend(_settings(max_prompt_tokens=1536, prefix_cache_mb=4096,
                                     batch_tokens=2048))
    assert (backend.max_length, backend.prefix_cache_mb, backend.batch_tokens) == (1536, 4096, 2048)
