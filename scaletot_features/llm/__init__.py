"""LLM backends: one protocol (backend.py), transformers on CPU (hf.py), vLLM on GPU (vllm.py),
and the models that ship inside registry packages (packaged.py).

The backends import torch and transformers (vLLM lazily), so they load on first attribute use:
importing this package stays cheap for code that only needs the protocol or the paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scaletot_features.llm.backend import BackendUsage, LLMBackend
from scaletot_features.llm.packaged import (
    converted_model_dir,
    default_cache_dir,
    find_packaged_gguf,
    model_id_for,
    resolve_model,
    set_offline_env,
    tiny_random_model_dir,
)

if TYPE_CHECKING:
    from scaletot_features.llm.hf import TransformersBackend
    from scaletot_features.llm.vllm import VLLMBackend

__all__ = [
    "BackendUsage",
    "LLMBackend",
    "TransformersBackend",
    "VLLMBackend",
    "converted_model_dir",
    "default_cache_dir",
    "find_packaged_gguf",
    "model_id_for",
    "resolve_model",
    "set_offline_env",
    "tiny_random_model_dir",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersBackend":
        from scaletot_features.llm.hf import TransformersBackend

        return TransformersBackend
    if name == "VLLMBackend":
        from scaletot_features.llm.vllm import VLLMBackend

        return VLLMBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
