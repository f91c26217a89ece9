"""Student inference: constrained decoding is exact, chains and representations per user."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import requires_ray
import torch

from scaletot_features.chain import ChainParseError, chain_text, parse_chain_values, segment_spans
from scaletot_features.config import build_settings
from scaletot_features.data.io import read_table
from scaletot_features.dataset import student_chain_schema, student_manifest
from scaletot_features.reasoning.chain_tokens import chain_tokens, encode_prompt
from scaletot_features.reasoning.constrained_decoder import ConstrainedDecoder
from scaletot_features.reasoning.prompts import student_prompt
from scaletot_features.taxonomy import DEFAULT_TAXONOMY as TAX
from trainers.osipo_reward import DEFAULT_OUTCOME_BUCKETS
from trainers.student_stage import covered_user_ids, run_inference, student_paths, train_student
from trainers.teach import teach


pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROFILES = ["age: 34\ndevice: iPhone 15 Pro\nacquisition channel: paid_social",
            "(no profile information)",
            "occupation: retired schoolteacher\ncity: Lyon\ninterests: gardening, opera, history"]


@torch.no_grad()
def _naive_value_logps(backend, prompt: str, values: list[str]) -> list[float]:
    """log p(" <value>" tokens | prompt + chain so far), from one plain forward."""
    text = chain_text(dict(zip(TAX.type_names, values)))
    pids, chain = encode_prompt(backend.tokenizer, prompt), chain_tokens(backend.tokenizer, text)
    ids = torch.tensor([pids + chain.ids])
    lp = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
    enc = backend.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for start, end in segment_spans(text):
        value_start = text.index(": ", start) + 1
        out.append(sum(lp[len(pids) + j - 1, t].item() for j, (t, (a, b)) in
                       enumerate(zip(chain.ids, enc["offset_mapping"])) if a >= value_start and b <= end))
    return out


def test_constrained_decoding_matches_a_plain_forward(tiny_backend):
    rng = np.random.default_rng(0)
    prompts = [student_prompt(p, TAX) for p in PROFILES]
    forced = [[t.value_names[rng.integers(len(t.value_names))] for t in TAX.types] for _ in prompts]
    dec = ConstrainedDecoder(tiny_backend.model, tiny_backend.tokenizer, TAX, batch_size=2)
    d = dec.decode(prompts, forced=forced, capture_hidden=True)
    assert d.values == forced
    for i, p in enumerate(prompts):
        assert np.allclose(d.logps[i], _naive_value_logps(tiny_backend, p, forced[i]), rtol=1e-4, atol=1e-4)
        text = chain_text(dict(zip(TAX.type_names, forced[i])))
        whole = tiny_backend.hidden_states([p + text], [(len(p), len(p) + len(text))])[0]
        assert np.allclose(d.representation[i], whole, atol=1e-4)
        lines = tiny_backend.hidden_states([p + text] * len(TAX.types),
                                           [(len(p) + a, len(p) + b) for a, b in segment_spans(text)])
        assert np.allclose(d.segment_representations[i], lines, atol=1e-4)
    # probs: each chosen value's share of the distribution over the allowed values
    assert ((d.probs > 0) & (d.probs < 1)).all()


def test_sampling_is_seeded_and_greedy_takes_the_most_probable_value(tiny_backend):
    prompts = [student_prompt(p, TAX) for p in PROFILES]
    dec = ConstrainedDecoder(tiny_backend.model, tiny_backend.tokenizer, TAX)
    a = dec.decode(prompts, samples=4, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = dec.decode(prompts, samples=4, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a.values == b.values and len(a.values) == 12
    for v in a.values:
        parse_chain_values(chain_text(dict(zip(TAX.type_names, v))), TAX)
    greedy = dec.decode(prompts)
    for i, v in enumerate(greedy.values[:1]):
        for k, t in enumerate(TAX.types):  # no other value is more probable than the one taken
            others = [[*v[:k], alt] + [t2.value_names[0] for t2 in TAX.types[k + 1:]]
                      for alt in t.value_names]
            scored = dec.decode([prompts[i]] * len(others), forced=others)
            assert greedy.logps[i, k] >= scored.logps[:, k].max() - 1e-5


@pytest.fixture(scope="module")
def trained(tiny_population, tmp_path_factory):
    """The tiny population taught and run through every student stage (tiny preset)."""
    data = tmp_path_factory.mktemp("student") / "data"
    shutil.copytree(tiny_population, data)
    s = build_settings("tiny", {"teacher": {"model": "tiny-random"}})
    teach(data, s, progress=False)
    report = train_student(data, s, progress=False)
    return data, s, report


def test_train_student_writes_every_stage_and_then_skips(trained):
    data, s, report = trained
    paths = student_paths(data)
    for key in ("split", "sft", "osipo", "chains", "chains_summary"):
        assert paths[key].exists(), key
    assert report["sft"]["steps"] == s.student.sft_max_steps
    assert report["osipo"]["steps"] == s.student.osipo_max_steps
    # event-derived labels: student.outcome auto is both, on the fixed default buckets
    osipo = json.loads(student_manifest(paths["osipo"]).read_text())
    assert osipo["outcome"] == "both"
    assert [{k: v for k, v in b.items() if k not in ("source", "known_users")}
            for b in osipo["outcome_buckets"]] == [b.as_dict() for b in DEFAULT_OUTCOME_BUCKETS]
    assert {b["source"] for b in osipo["outcome_buckets"]} == {"default"}
    assert report["sft"]["peak_rss_mb"] >= report["sft"]["start_rss_mb"] > 0
    again = train_student(data, s, progress=False)
    assert all("skipped" in again[k] for k in ("sft", "osipo", "infer"))


def test_student_chains_one_valid_row_per_covered_user(trained, tiny_model_dir):
    data, s, report = trained
    table = read_table(student_paths(data)["chains"])
    assert table.schema.equals(student_chain_schema(TAX))
    ids = table.column("user_id").to_pylist()
    assert sorted(ids) == covered_user_ids(data) and len(ids) == len(set(ids))
    hidden = 64  # the tiny model's hidden size
    for row in table.to_pylist():
        assert row["valid"] and row["error"] is None and row["provenance"] == "student"
        assert row["model_id"].startswith("student-osipo(")
        values = parse_chain_values(row["chain_text"], TAX)
        assert values == {t: row[t] for t in TAX.type_names}
        assert all(0 < row[f"{t}_prob"] <= 1 for t in TAX.type_names)
        assert len(row["representation"]) == hidden and np.isfinite(row["representation"]).all()
        assert [len(x) for x in row["segment_representations"]] == [hidden] * len(TAX.types)
    assert report["infer"]["invalid_rate"] == 0.0 and report["infer"]["users"] == len(ids)


def test_free_generation_counts_invalid_chains(trained, tmp_path):
    data, s, _ = trained
    users = covered_user_ids(data)[:3]
    out = tmp_path / "free"
    summary = run_inference(data, s, user_ids=users, model_dir=student_paths(data)["sft"],
                            decode="free", out_dir=out, progress=False)
    table = pq.read_table(next(out.glob("part-*.parquet")))
    assert table.column("user_id").to_pylist() == users
    valid = table.column("valid").to_pylist()
    assert summary["valid"] == sum(valid) and summary["invalid_rate"] == pytest.approx(1 - sum(valid) / 3)
    for row in table.to_pylist():
        if row["valid"]:
            parse_chain_values(row["chain_text"], TAX)
            assert len(row["representation"]) == 64
        else:  # the random model's text: refused by the strict parser, with its reason
            with pytest.raises(ChainParseError):
                parse_chain_values(row["chain_text"], TAX)
            assert row["error"] and row["representation"] is None
            assert all(row[t] is None for t in TAX.type_names)


def test_unknown_users_are_refused(trained, tmp_path):
    data, s, _ = trained
    with pytest.raises(KeyError, match="no profile"):
        run_inference(data, s, user_ids=[10**12], out_dir=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- resume and Ray


def _by_user(table) -> dict[int, dict]:
    return {r["user_id"]: r for r in table.to_pylist()}


def _assert_same_chains(got, want) -> None:
    """Same users, same values; probabilities and representations to float tolerance (batches
    are composed differently, and padding changes the summation order)."""
    got, want = _by_user(got), _by_user(want)
    assert sorted(got) == sorted(want)
    for u, w in want.items():
        g = got[u]
        assert [g[t] for t in TAX.type_names] == [w[t] for t in TAX.type_names], u
        np.testing.assert_allclose([g[f"{t}_prob"] for t in TAX.type_names],
                                   [w[f"{t}_prob"] for t in TAX.type_names], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g["representation"], w["representation"], rtol=1e-3, atol=1e-4)


def _killed_after_one_part(monkeypatch):
    """Inference dies (as if killed) when it starts its second part; returns the real function
    (to put back for the resumed run)."""
    import scaletot_features.reasoning.student_inference as inference

    real, calls = inference.infer_table, []

    def dies_on_the_second_part(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "infer_table", dies_on_the_second_part)
    return real


def test_a_killed_inference_resumes_without_losing_or_repeating_a_user(trained, tmp_path,
                                                                        monkeypatch):
    import scaletot_features.reasoning.student_inference as inference

    data, s, _ = trained
    users = covered_user_ids(data)
    s = s.model_copy(deep=True)
    s.student.infer_part_users = 4
    out = tmp_path / "chains"
    real = _killed_after_one_part(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_inference(data, s, user_ids=users, out_dir=out, progress=False)
    assert not out.exists()  # readers never see half a table
    monkeypatch.setattr(inference, "infer_table", real)
    summary = run_inference(data, s, user_ids=users, out_dir=out, progress=False)
    assert summary["resumed"] == 4 and summary["users"] == len(users)
    table = read_table(out)
    assert sorted(table.column("user_id").to_pylist()) == sorted(users)  # each user once
    _assert_same_chains(table, read_table(student_paths(data)["chains"]))
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_a_scratch_folder_of_another_model_is_not_resumed(trained, tmp_path, monkeypatch):
    import scaletot_features.reasoning.student_inference as inference
    from scaletot_features.dataset import partial_dir

    data, s, _ = trained
    users = covered_user_ids(data)[:6]
    s = s.model_copy(deep=True)
    s.student.infer_part_users = 3
    out = tmp_path / "chains"
    real = _killed_after_one_part(monkeypatch)
    with pytest.raises(KeyboardInterrupt):  # the SFT student's parts
        run_inference(data, s, user_ids=users, model_dir=student_paths(data)["sft"],
                      out_dir=out, progress=False)
    assert partial_dir(out).exists()
    monkeypatch.setattr(inference, "infer_table", real)
    summary = run_inference(data, s, user_ids=users, out_dir=out, progress=False)  # OSIPO's
    assert summary["resumed"] == 0
    model_ids = set(read_table(out).column("model_id").to_pylist())
    assert len(model_ids) == 1 and model_ids.pop().startswith("student-osipo(")



@pytest.mark.slow  # local Ray start-up and two actors loading the student: about 30 s
@requires_ray
def test_ray_data_inference_writes_the_same_chains_as_the_local_engine(trained, tmp_path):
    import tempfile

    data, s, _ = trained
    s = s.model_copy(deep=True)
    s.ray.tmpdir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths
    s.ray.batch_users = 5  # several batches over the two actors
    try:
        summary = run_inference(data, s, out_dir=tmp_path / "ray", progress=False, engine="ray")
    finally:
        shutil.rmtree(s.ray.tmpdir, ignore_errors=True)
    assert summary["engine"] == "ray" and summary["invalid_rate"] == 0.0
    table = read_table(tmp_path / "ray")
    assert table.schema.equals(student_chain_schema(TAX))  # no tensor extension type
    assert table.num_rows == len(covered_user_ids(data))
    _assert_same_chains(table, read_table(student_paths(data)["chains"]))
