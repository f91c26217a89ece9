"""The teacher's content-addressed chain cache: a chain searched once is found again by its
profile text and teacher configuration, in later runs and, with a shared folder, other datasets.

- **Key**: sha256 of (teacher key, profile text). The teacher key is a sha256 of everything else
  a chain depends on (:func:`teacher_key`): the model (versioned id; a local folder's file
  sizes and times), the scorer's fingerprint (scoring mode, calibration mode, the
  calibration offsets actually used, a hash of every prompt template and the chat template),
  the profile style, the taxonomy, the search configuration and :data:`CACHE_VERSION`. Change
  any of them and every lookup misses. The backend is not in it: transformers and vLLM serving
  the same model agree within floating-point tolerance, and a lower precision moves the
  calibration offsets, which are.
- **Storage**: parquet parts under ``teacher.chain_cache`` (default ``DIR/teacher/chain_cache``,
  :attr:`~scaletot_features.dataset.TeacherLayout.chain_cache`), rows of
  :func:`~scaletot_features.dataset.teacher_chain_cache_schema`. A part is published whole
  (:func:`~scaletot_features.data.io.append_part_atomic`) and never changed; its metadata names
  its teacher key and what went into it, so a lookup skips other configurations' parts by their
  footer. Two runs writing one folder at once may store a key twice: the first copy is read.
- Failures are not cached: a later run searches the text again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from scaletot_features.data.io import append_part_atomic, parquet_files
from scaletot_features.dataset import teacher_chain_cache_schema
from scaletot_features.llm.backend import LLMBackend
from scaletot_features.llm.packaged import model_fingerprint
from scaletot_features.reasoning.scoring import NodeScorer
from scaletot_features.reasoning.search import SearchConfig
from scaletot_features.taxonomy import Taxonomy

CACHE_VERSION = 1
"""Raise when a cached chain would mean something else (the search or its record changed)."""

TEACHER_KEY_META = b"scaletot_teacher_key"
TEACHER_DESCRIPTION_META = b"scaletot_teacher"


def _sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def teacher_description(backend: LLMBackend, scorer: NodeScorer, cfg: SearchConfig,
                        profile_style: str, taxonomy: Taxonomy) -> dict:
    """What a chain depends on besides the profile text (the scorer primed first)."""
    return {"version": CACHE_VERSION, "model": model_fingerprint(backend.model_id),
            "scorer": scorer.fingerprint(),
            "profile_style": profile_style, "taxonomy": taxonomy.fingerprint(),
            "search": dataclasses.asdict(cfg)}


def teacher_key(description: dict) -> str:
    return _sha256(description)


def text_key(teacher: str, profile_text: str) -> str:
    """The cache key of one profile text under one teacher key."""
    return _sha256([teacher, profile_text])


class ChainCache:
    """The entries of one teacher key in a cache folder: look up, then add parts."""

    def __init__(self, folder: Path, description: dict, taxonomy: Taxonomy):
        self.folder = Path(folder)
        self.description = description
        self.teacher_key = teacher_key(description)
        self.schema = teacher_chain_cache_schema(taxonomy)

    def key(self, profile_text: str) -> str:
        return text_key(self.teacher_key, profile_text)

    def lookup(self, keys: Iterable[str]) -> dict[str, dict]:
        """The cached entry of each of ``keys`` that has one (first copy wins)."""
        wanted = sorted(set(keys))
        found: dict[str, dict] = {}
        if not wanted or not self.folder.is_dir():
            return found
        for part in parquet_files(self.folder):
            meta = pq.read_schema(part).metadata or {}
            if meta.get(TEACHER_KEY_META, b"").decode() != self.teacher_key:
                continue
            for rec in pq.read_table(part, filters=[("key", "in", wanted)]).to_pylist():
                found.setdefault(rec["key"], rec)
        return found

    def add(self, entries: list[dict]) -> Path | None:
        """Publish ``entries`` (rows of the cache schema, this teacher key) as one new part."""
        if not entries:
            return None
        if any(e["teacher_key"] != self.teacher_key for e in entries):
            raise ValueError("a chain cache part holds one teacher key")
        table = pa.Table.from_pylist(entries, schema=self.schema).replace_schema_metadata({
            TEACHER_KEY_META: self.teacher_key.encode(),
            TEACHER_DESCRIPTION_META: json.dumps(self.description, sort_keys=True).encode()})
        return append_part_atomic(table, self.folder)
