"""Student inference: chains and representations per user, written as the stage's table.

Writes ``DIR/student/chains/part-*.parquet`` (DESIGN.md 4.6, stage contract in docs) with the
constrained decoder (always valid), or with **free generation** (``decode="free"``): the model
writes the text itself and the strict parser
(:func:`scaletot_features.chain.parse_chain_values`) judges it; the invalid rate is counted.
Free generation is slow on a CPU: use it on small samples.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from scaletot_features.chain import ChainParseError, chain_text, parse_chain_values
from scaletot_features.config import RayConfig
from scaletot_features.data.io import ResumableDir, read_table
from scaletot_features.dataset import (
    DatasetLayout, partial_dir, prob_column, student_chain_schema, student_manifest, value_column,
)
from scaletot_features.profile import ProfileSchema
from scaletot_features.reasoning.constrained_decoder import ConstrainedDecoder, Decoded
from scaletot_features.reasoning.prompts import student_prompt
from scaletot_features.taxonomy import Taxonomy


def profile_texts(data_dir: Path, user_ids: Sequence[int], schema: ProfileSchema) -> dict[int, str]:
    """user_id -> the profile as prompt text, for the requested users (an unknown id is an error)."""
    profiles = read_table(DatasetLayout(Path(data_dir)).profiles)
    rows = profiles.filter(pc.is_in(profiles.column("user_id"),
                                    value_set=pa.array(list(user_ids), pa.int64()))).to_pylist()
    out = {r["user_id"]: schema.to_text(r) for r in rows}
    missing = [u for u in user_ids if u not in out]
    if missing:
        raise KeyError(f"{len(missing)} requested users have no profile, e.g. user_id={missing[0]}")
    return out


def student_model_id(model_dir: Path) -> str:
    """Provenance of a student folder: its stage and the base model it was trained from."""
    meta_path = student_manifest(model_dir)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return f"student-{meta.get('stage', '?')}({meta.get('base_model_id', '?')})"
    return str(Path(model_dir).resolve())


@dataclass
class InferenceSummary:
    users: int
    valid: int
    invalid_rate: float
    seconds: float
    users_per_s: float  # over the users this run computed (resumed ones excluded)
    decode: str
    model_id: str
    engine: str = "local"
    resumed: int = 0  # users found done in the scratch folder of a killed run

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def infer_table(backend: Any, texts: dict[int, str], taxonomy: Taxonomy, decode: str = "constrained",
                batch_size: int = 16, max_new_tokens: int | None = None,
                model_id: str | None = None, progress: bool = False) -> pa.Table:
    """Student chains and representations for ``texts`` (user_id -> profile text), in that order.

    ``backend`` is a :class:`~scaletot_features.llm.hf.TransformersBackend` (its model and
    tokenizer are used directly). ``decode="constrained"`` (always valid) or ``"free"``: greedy
    generation parsed strictly; an invalid chain has null values and representations and its
    parser message in ``error``; a valid one gets probabilities and representations from a
    teacher-forced constrained pass over the values it wrote.
    """
    if decode not in ("constrained", "free"):
        raise ValueError(f"decode must be 'constrained' or 'free', got {decode!r}")
    dec = ConstrainedDecoder(backend.model, backend.tokenizer, taxonomy, batch_size=batch_size)
    ids = list(texts)
    model_id = model_id or backend.model_id
    records: list[dict] = []
    for chunk in _progress_chunks(ids, batch_size, progress, f"student ({decode})"):
        prompts = [student_prompt(texts[u], taxonomy) for u in chunk]
        if decode == "constrained":
            d = dec.decode(prompts, capture_hidden=True)
            records += _records(chunk, d, [None] * len(chunk), taxonomy, model_id)
            continue
        n_new = max_new_tokens or _max_chain_tokens(dec) + 8
        generated = backend.generate(prompts, max_new_tokens=n_new, temperature=0.0)
        parsed: list[dict[str, str] | None] = []
        errors: list[str | None] = []
        for g in generated:
            try:
                parsed.append(parse_chain_values(g, taxonomy))
                errors.append(None)
            except ChainParseError as e:
                parsed.append(None)
                errors.append(str(e))
        ok = [i for i, p in enumerate(parsed) if p is not None]
        forced = dec.decode([prompts[i] for i in ok], forced=[list(parsed[i].values()) for i in ok],
                            capture_hidden=True) if ok else None
        recs: list[dict] = [{} for _ in chunk]
        if forced is not None:
            for r, i in zip(_records([chunk[i] for i in ok], forced, [None] * len(ok), taxonomy,
                                     model_id), ok):
                recs[i] = r
        for i, (u, g, e) in enumerate(zip(chunk, generated, errors)):
            if e is not None:
                recs[i] = _invalid_record(u, g, e, taxonomy, model_id)
        records += recs
    return pa.Table.from_pylist(records, schema=student_chain_schema(taxonomy))


def _records(users: list[int], d: Decoded, errors: list[str | None], taxonomy: Taxonomy,
             model_id: str) -> list[dict]:
    out = []
    for i, u in enumerate(users):
        vals = dict(zip(taxonomy.type_names, d.values[i]))
        rec = {"user_id": u, "chain_text": chain_text(vals), "valid": True, "error": errors[i],
               "provenance": "student", "model_id": model_id,
               "representation": d.representation[i].tolist(),
               "segment_representations": d.segment_representations[i].tolist()}
        for k, t in enumerate(taxonomy.type_names):
            rec[value_column(t)] = vals[t]
            rec[prob_column(t)] = float(d.probs[i, k])
        out.append(rec)
    return out


def _invalid_record(user: int, text: str, error: str, taxonomy: Taxonomy, model_id: str) -> dict:
    rec = {"user_id": user, "chain_text": text, "valid": False, "error": error,
           "provenance": "student", "model_id": model_id, "representation": None,
           "segment_representations": None}
    for t in taxonomy.type_names:
        rec[value_column(t)] = None
        rec[prob_column(t)] = None
    return rec


def _max_chain_tokens(dec: ConstrainedDecoder) -> int:
    return sum(len(h) + max(map(len, c)) for h, c in zip(dec.headers, dec.candidates))


def _progress_chunks(ids: list[int], size: int, enabled: bool, label: str) -> Iterator[list[int]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*cols, disable=not enabled, transient=False) as bar:
        task = bar.add_task(label, total=len(ids))
        for start in range(0, len(ids), size):
            yield ids[start:start + size]
            bar.advance(task, min(size, len(ids) - start))


def student_run_key(model_dir: Path, decode: str, taxonomy: Taxonomy) -> str:
    """What a resumed inference must share with the run that wrote the parts: the model's files
    (names, sizes, modification times), the decoding and the taxonomy."""
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                   for f in Path(model_dir).iterdir() if f.is_file())
    blob = json.dumps({"model": files, "decode": decode, "taxonomy": taxonomy.fingerprint()})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def student_batch_fn(model_dir: str, taxonomy: Taxonomy, decode: str, batch_size: int,
                     model_id: str) -> Callable[[pa.Table], pa.Table]:
    """One loaded student mapping batches of (user_id, text) to its chains: a Ray actor's work."""
    from scaletot_features.llm.hf import TransformersBackend

    backend = TransformersBackend(model_dir, batch_size=batch_size)

    def run(batch: pa.Table) -> pa.Table:
        texts = dict(zip(batch.column("user_id").to_pylist(), batch.column("text").to_pylist()))
        return infer_table(backend, texts, taxonomy, decode, batch_size, model_id=model_id)

    return run


def write_student_chains(data_dir: Path, model_dir: Path, user_ids: Sequence[int], taxonomy: Taxonomy,
                         schema: ProfileSchema, out_dir: Path | None = None,
                         decode: str = "constrained", batch_size: int = 16, part_rows: int = 256,
                         overwrite: bool = False, progress: bool = True, engine: str = "local",
                         ray_config: RayConfig | None = None) -> InferenceSummary:
    """Run the student in ``model_dir`` over ``user_ids`` and write ``out_dir`` (default
    DIR/student/chains) as parquet parts.

    The parts are built in a scratch folder (``dataset.partial_dir``): a killed run resumes
    there, skipping the users already written; the folder becomes ``out_dir`` when every user is
    done, so readers never see half a table. ``engine="ray"`` maps batches of
    ``ray_config.batch_users``
    users over Ray Data actors that each load the student once (same rows as the local engine).
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray":
        from scaletot_features.ray_engine import require_ray

        require_ray()
    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir is not None else DatasetLayout(data_dir).student.chains
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists (pass --overwrite to replace it)")
    texts = profile_texts(data_dir, user_ids, schema)
    model_id = student_model_id(model_dir)
    out_schema = student_chain_schema(taxonomy)
    parts = ResumableDir(out_dir, partial_dir(out_dir),
                         student_run_key(model_dir, decode, taxonomy))
    done = parts.done_ids()
    todo = [u for u in dict.fromkeys(user_ids) if u not in done]
    t0 = time.perf_counter()
    if engine == "local" and todo:
        from scaletot_features.llm.hf import TransformersBackend

        backend = TransformersBackend(model_dir, batch_size=batch_size)
        for start in range(0, len(todo), part_rows):
            part = {u: texts[u] for u in todo[start:start + part_rows]}
            parts.write(infer_table(backend, part, taxonomy, decode, batch_size,
                                    model_id=model_id, progress=progress))
    elif todo:
        from scaletot_features.ray_engine import stream_map

        inputs = pa.table({"user_id": pa.array(todo, pa.int64()),
                           "text": pa.array([texts[u] for u in todo], pa.string())})
        make = functools.partial(student_batch_fn, str(model_dir), taxonomy, decode, batch_size,
                                 model_id)
        finished = 0
        for table in stream_map(inputs, make, ray_config or RayConfig(), out_schema):
            parts.write(table)
            finished += table.num_rows
            if progress:
                print(f"student ({decode}, ray): {finished}/{len(todo)} users", flush=True)
    seconds = time.perf_counter() - t0
    final = read_table(parts.finish(), columns=["valid"])
    n, valid = final.num_rows, int(pc.sum(final.column("valid")).as_py() or 0)
    return InferenceSummary(n, valid, 1 - valid / n if n else 0.0, seconds,
                            len(todo) / seconds if seconds and todo else 0.0, decode, model_id,
                            engine, len(done))
