"""Student SFT: TRL ``SFTTrainer`` on prompt = the profile, completion = the teacher's chain.

Reads DIR/teacher/chains; writes

- ``DIR/student/split.parquet``: the covered users with a teacher chain, each in ``train`` or
  ``holdout`` (deterministic: a seeded hash of the user id orders them; the first
  ``holdout_fraction`` are held out). Only ``train`` users are trained on, by SFT and OSIPO;
  the benchmark evaluates on ``holdout``.
- ``DIR/student/sft/``: the fine-tuned model (LoRA adapters merged into the weights), tokenizer
  and ``student.json`` (stage, base model, steps, timings, loss history). Written to a temporary
  folder and renamed, so it is whole or absent; ``TransformersBackend(folder)`` loads it offline.

The loss is on the completion only (``completion_only_loss=True``): the student learns to write
chains, not profiles.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scaletot_features.config import Settings
from scaletot_features.data.io import atomic_dir, write_parquet_atomic
from scaletot_features.reasoning.prompts import student_prompt
from scaletot_features.dataset import (
    STUDENT_MANIFEST, STUDENT_SPLIT_SCHEMA, DatasetLayout, hash_order,
)
from scaletot_features.reasoning.student_inference import profile_texts

SPLIT_SCHEMA = STUDENT_SPLIT_SCHEMA


def split_path(data_dir: Path) -> Path:
    return DatasetLayout(data_dir).student.split


def make_split(user_ids: list[int], holdout_fraction: float, seed: int) -> pa.Table:
    """Deterministic train/holdout split, independent of input order; sorted by user_id.

    Exactly ``round(holdout_fraction * n)`` users are held out: the first of the user-hash order.
    """
    ids = sorted(set(int(u) for u in user_ids))
    ranked = np.asarray(ids, dtype=np.int64)[hash_order(ids, seed, "student_holdout")].tolist()
    n_hold = round(holdout_fraction * len(ids))
    if holdout_fraction > 0 and len(ids) >= 2:
        n_hold = min(max(n_hold, 1), len(ids) - 1)  # both sides non-empty
    hold = set(ranked[:n_hold])
    return pa.table({"user_id": pa.array(ids, pa.int64()),
                     "split": ["holdout" if u in hold else "train" for u in ids]}, schema=SPLIT_SCHEMA)


def _split_key(user_ids: list[int], settings: Settings) -> str:
    s = settings.student
    blob = json.dumps({"ids": sorted(int(u) for u in user_ids), "seed": s.seed,
                       "holdout_fraction": s.holdout_fraction})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_split(data_dir: Path, settings: Settings, overwrite: bool = False) -> pa.Table:
    """Write DIR/student/split.parquet once; a later call with the same teacher chains and
    settings reads it back, and a different one is refused unless ``overwrite``."""
    from trainers.teach import load_chains

    ids = load_chains(data_dir).column("user_id").to_pylist()
    key = _split_key(ids, settings)
    path = split_path(data_dir)
    if path.exists() and not overwrite:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"scaletot_split_key", b"").decode() != key:
            raise RuntimeError(
                f"{path} was made from other teacher chains or student settings; re-run the "
                "student stage with overwrite to start again"
            )
        return pq.read_table(path)
    table = make_split(ids, settings.student.holdout_fraction, settings.student.seed)
    write_parquet_atomic(table.replace_schema_metadata({"scaletot_split_key": key}), path)
    return table


def split_user_ids(data_dir: Path, split: str) -> list[int]:
    t = pq.read_table(split_path(data_dir))
    return t.filter(pc.equal(t.column("split"), split)).column("user_id").to_pylist()


def sft_records(data_dir: Path, settings: Settings, split: str = "train") -> list[dict[str, Any]]:
    """``{"user_id", "prompt", "completion"}`` per user of ``split``: the SFT examples."""
    from trainers.teach import load_chains

    taxonomy = settings.taxonomy()
    ids = split_user_ids(data_dir, split)
    chains = load_chains(data_dir)
    chains = chains.filter(pc.is_in(chains.column("user_id"), value_set=pa.array(ids, pa.int64())))
    by_user = dict(zip(chains.column("user_id").to_pylist(), chains.column("chain_text").to_pylist()))
    texts = profile_texts(data_dir, ids, settings.profile_schema())
    return [{"user_id": u, "prompt": student_prompt(texts[u], taxonomy), "completion": by_user[u]}
            for u in ids]


def lora_config(settings: Settings) -> Any:
    """LoRA on every linear layer of the decoder (not the LM head, which is tied)."""
    from peft import LoraConfig

    r = settings.student.lora_r
    return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


@contextmanager
def hf_progress_bars(enabled: bool) -> Iterator[None]:
    """Silence transformers' loading/saving bars when the caller asked for no progress."""
    import datasets
    from transformers.utils import logging as hf_logging

    was_hf = hf_logging.is_progress_bar_enabled()
    was_ds = datasets.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_hf:
            hf_logging.enable_progress_bar()
        if was_ds:
            datasets.enable_progress_bars()


def load_model(name_or_path: str | Path, progress: bool = False) -> tuple[Any, Any]:
    """(model in fp32, tokenizer) from a model name or folder, offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scaletot_features.llm.packaged import resolve_model, set_offline_env

    set_offline_env()
    path = resolve_model(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    with hf_progress_bars(progress):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model, tokenizer


def save_student(model: Any, tokenizer: Any, out: Path, manifest: dict[str, Any],
                 progress: bool = False) -> Path:
    """Save a plain (merged) model folder atomically, with ``student.json``."""
    with atomic_dir(out, overwrite=True) as tmp, hf_progress_bars(progress):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STUDENT_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True,
                                                       default=str) + "\n")
    return out


def train_sft(data_dir: Path, settings: Settings, progress: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    """SFT the student on the train split; write DIR/student/sft/. Returns the summary that
    ``student.json`` records (steps, seconds, seconds_per_step, loss history, ...)."""
    import tempfile

    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from scaletot_features.llm.packaged import model_id_for

    data_dir = Path(data_dir)
    out = DatasetLayout(data_dir).student.sft
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite to replace it)")
    s = settings.student
    ensure_split(data_dir, settings, overwrite=overwrite)
    records = sft_records(data_dir, settings, "train")
    if not records:
        raise RuntimeError("no training users: the teacher wrote no chains, or all are held out")
    model, tokenizer = load_model(s.model, progress)
    dataset = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]}
                                 for r in records])
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        args = SFTConfig(
            output_dir=scratch, max_steps=s.sft_max_steps, num_train_epochs=s.sft_epochs,
            per_device_train_batch_size=s.batch_size, learning_rate=s.learning_rate,
            completion_only_loss=True, max_length=s.max_length, packing=False,
            use_cpu=not cuda, bf16=False, fp16=False, gradient_checkpointing=False,
            report_to="none", save_strategy="no", logging_steps=1, seed=s.seed, data_seed=s.seed,
            disable_tqdm=not progress, dataloader_num_workers=0,
        )
        with hf_progress_bars(progress):
            trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                                 processing_class=tokenizer,
                                 peft_config=lora_config(settings) if s.lora else None)
        if not progress:  # with tqdm off, transformers prints every log record instead
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        steps = int(result.global_step)
        trained = trainer.model
        merged = trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    summary = {
        "stage": "sft", "base_model": s.model, "base_model_id": model_id_for(s.model),
        "lora": s.lora, "lora_r": s.lora_r if s.lora else None, "train_users": len(records),
        "steps": steps, "epochs": float(result.metrics.get("epoch", 0.0)), "seconds": seconds,
        "seconds_per_step": seconds / max(steps, 1), "batch_size": s.batch_size,
        "learning_rate": s.learning_rate, "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "loss_history": losses,
        "taxonomy_fingerprint": settings.taxonomy().fingerprint(),
    }
    save_student(merged, tokenizer, out, summary, progress)
    return summary
