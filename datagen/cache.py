"""Content-addressed cache of model calls, so a rerun after a crash skips finished work.

Each finished call is stored as one small JSON file named by the hash of (model identity,
messages/prompt, sampling params incl. seed) — see Request.cache_key. The file holds the
completion and, since issue 15, the call itself (`model`, `request`), so `iter_entries` can
rebuild every request of a run (benchmarks/replay_limit.py replays them); entries written
before that have no `request` and are skipped there, and still serve as hits. Files are written
whole (temp file + rename locally; a single object on gs://), so a crash mid-write never
leaves a corrupt entry, and Dataflow workers can share one `gs://` cache through Beam's
filesystems. Failed calls are not cached: a rerun retries them.
"""
from __future__ import annotations

import concurrent.futures as cf
import glob
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any, Iterator, NamedTuple, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from datagen.config_loader import option
from datagen.inference.base import LLM, Completion, Request, SamplingParams

log = logging.getLogger(__name__)
CACHE_NAMESPACE = "synthpost.cache"


@dataclass
class CacheConfig:
    enabled: bool = option(True, "reuse finished model calls on rerun; `--no_cache` turns it off")
    dir: str = option("", "local path or gs://bucket/prefix; empty: ~/.cache/synthpost/calls")


_COMPLETION_FIELDS = {f.name for f in fields(Completion)}


class CacheEntry(NamedTuple):
    key: str
    model: str  # the model identity the call was keyed on
    request: Request
    completion: Completion


def request_to_dict(request: Request) -> dict[str, Any]:
    return {"messages": [list(m) for m in request.messages], "prompt": request.prompt,
            "params": request.params.to_dict()}


def request_from_dict(data: dict[str, Any]) -> Request:
    params = dict(data["params"])
    params["stop"] = tuple(params.get("stop") or ())
    return Request(messages=tuple(tuple(m) for m in data.get("messages") or ()), prompt=data.get("prompt"),
                   params=SamplingParams(**params))


def default_cache_dir() -> str:
    from datagen.inference.model_names import cache_dir

    return str(cache_dir() / "calls")


class CallCache:
    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self._local = "://" not in self.root
        if self._local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.json"

    def get(self, key: str) -> Completion | None:
        path = self.path(key)
        try:
            if self._local:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            else:
                with FileSystems.open(path) as f:
                    data = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError):  # absent, or unreadable: treat as a miss
            return None
        except Exception:  # noqa: BLE001 - remote filesystems raise their own types
            return None
        return _completion(data)

    def put(self, key: str, completion: Completion, request: Request | None = None, model: str = "") -> None:
        entry = {**completion.to_dict(), "cached": False}
        if request is not None:  # the call itself, so a run's requests can be rebuilt (iter_entries)
            entry.update(model=model, request=request_to_dict(request))
        payload = json.dumps(entry, ensure_ascii=False).encode("utf-8")
        path = self.path(key)
        try:
            if self._local:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as f:
                    f.write(payload)
                os.replace(tmp, path)
            else:
                with FileSystems.create(path) as f:
                    f.write(payload)
        except Exception as err:  # noqa: BLE001 - a cache write failure must not fail the call
            log.warning("cache write failed for %s: %s", path, err)

    def iter_entries(self) -> Iterator[CacheEntry | str]:
        """Every stored call with its request rebuilt; the key alone for an entry that does not
        hold its request (written before requests were stored) or cannot be read."""
        for path in self._entry_paths():
            key = path.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                with FileSystems.open(path) as f:
                    data = json.loads(f.read().decode("utf-8"))
                request = request_from_dict(data["request"])
            except Exception:  # noqa: BLE001 - absent request, unreadable file: reported as a key
                yield key
                continue
            yield CacheEntry(key, data.get("model", ""), request, _completion(data))

    def _entry_paths(self) -> list[str]:
        pattern = f"{self.root}/*/*.json"  # temp files end in .tmp: never matched
        if self._local:
            return sorted(glob.glob(pattern))
        return sorted(m.path for result in FileSystems.match([pattern]) for m in result.metadata_list)


def _completion(data: dict[str, Any]) -> Completion:
    """A stored entry as a cache hit (the call's own fields, and any added later, left out)."""
    return Completion(**{**{k: v for k, v in data.items() if k in _COMPLETION_FIELDS}, "cached": True})


class CachedLLM:
    """Wraps any backend: hits return at once, misses go to the model and are stored."""

    def __init__(self, llm: LLM, root: str) -> None:
        self.llm = llm
        self.identity = llm.identity
        self.cache = CallCache(root)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        # writes leave the client's event loop: on gs:// each one is a network round trip
        self._writer = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache-writer")
        self._unwritten: dict[str, Completion] = {}  # queued writes, so a repeat hits before its write lands
        self._hit_counter = Metrics.counter(CACHE_NAMESPACE, "hits")
        self._miss_counter = Metrics.counter(CACHE_NAMESPACE, "misses")

    def submit(self, request: Request) -> "cf.Future[Completion]":
        key = request.cache_key(self.identity)
        with self._lock:
            found = self._unwritten.get(key)
        if found is not None:
            found = Completion(**{**found.to_dict(), "cached": True})
        else:
            found = self.cache.get(key)
        if found is not None:
            self._count(hit=True)
            future: cf.Future = cf.Future()
            future.set_result(found)
            return future
        self._count(hit=False)
        inner = self.llm.submit(request)
        inner.add_done_callback(lambda f: self._store(key, request, f))
        return inner

    def _store(self, key: str, request: Request, future: "cf.Future[Completion]") -> None:
        if future.cancelled() or future.exception() is not None:
            return
        completion = future.result()
        if completion.ok:
            with self._lock:
                self._unwritten[key] = completion
            self._writer.submit(self._write, key, request, completion)

    def _write(self, key: str, request: Request, completion: Completion) -> None:
        self.cache.put(key, completion, request, self.identity)
        with self._lock:
            self._unwritten.pop(key, None)

    def flush(self) -> None:
        """Wait until every finished call is on disk (the writes are queued on other threads)."""
        while True:
            with self._lock:
                if not self._unwritten:
                    return
            time.sleep(0.05)

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        try:
            (self._hit_counter if hit else self._miss_counter).inc()
        except Exception:  # noqa: BLE001 - outside a Beam bundle there is no metrics container
            pass

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [f.result() for f in [self.submit(r) for r in requests]]

    def close(self) -> None:
        self._writer.shutdown(wait=True)  # every finished call is on disk before we return
        self.llm.close()
