"""Roles to models, and batched generation through the datagen inference layer with progress lines.

A role (model, baseline, judge) names a `models:` entry, or else an embedded alias, a local
directory or a hub id served by the config's default backend. Roles that resolve to the same
model config share one client — and so one vLLM server — through the registry.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import time
from typing import Sequence

from datagen.cache import default_cache_dir
from datagen.inference import registry
from datagen.inference.base import Completion, InferenceError, Request
from datagen.inference.model_names import resolve_model
from datagen.inference.registry import ModelConfig
from pipelines.evaluation.eval_config import EvalConfig

log = logging.getLogger("synthpost.eval")


def model_config(cfg: EvalConfig, name: str) -> ModelConfig:
    """The model config a role name stands for, with the call cache set; checked before any work."""
    if name in cfg.models:
        model = cfg.models[name]
    else:
        model = ModelConfig(backend=cfg.backend, model=name)
    if model.backend in ("vllm", "transformers"):
        resolve_model(model.model)  # an unknown alias or a directory without config.json fails here
    cache_dir = (cfg.cache.dir or default_cache_dir()) if cfg.cache.enabled else ""
    return dataclasses.replace(model, cache_dir=cache_dir)


def generate(model: ModelConfig, requests: Sequence[Request], label: str, every: float = 20.0) -> list[Completion]:
    """All requests at once (the server batches them), results in order; a progress line every
    `every` seconds. InferenceError when the model cannot start, or when every call failed."""
    if not requests:
        return []
    started = time.monotonic()
    log.info("%s: %d requests to %s (%s backend)", label, len(requests), model.name, model.backend)
    llm = registry.get_llm(model)  # a managed vLLM server may still be starting: the first lines include it
    futures = [llm.submit(r) for r in requests]
    pending = set(futures)
    while pending:
        _, pending = cf.wait(pending, timeout=every)
        if pending:
            log.info("%s: %d/%d done (%.0f s)", label, len(futures) - len(pending), len(futures),
                     time.monotonic() - started)
    completions = [f.result() for f in futures]
    failed = [c for c in completions if not c.ok]
    cached = sum(c.cached for c in completions)
    log.info("%s: %d calls in %.0f s (%d from cache, %d failed)", label, len(completions),
             time.monotonic() - started, cached, len(failed))
    if len(failed) == len(completions):
        raise InferenceError(f"{label}: every call to {model.name} failed ({failed[0].error})")
    return completions
