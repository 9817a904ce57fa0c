"""What the vLLM engine itself reports while a run goes on, sampled from its Prometheus `/metrics`.

Client-side counts include requests still queued in the client (its `max_concurrency`
semaphore); the engine's own gauges say what it really held: `vllm:num_requests_running`
(sequences in the batch; a request with n counts n) and `vllm:num_requests_waiting`, and its
counters the tokens it generated. Sampled every `every` seconds from every server.
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request

GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
          "vllm:generation_tokens_total": "generated", "vllm:prompt_tokens_total": "prompt"}
_LINE = re.compile(r"^(vllm:[a-z_]+)(?:\{[^}]*\})?\s+([0-9.eE+-]+)$")


def read_metrics(base_url: str) -> dict[str, float]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/metrics", timeout=5) as resp:
        text = resp.read().decode("utf-8")
    values = {name: 0.0 for name in GAUGES.values()}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match and match.group(1) in GAUGES:
            values[GAUGES[match.group(1)]] += float(match.group(2))
    return values


class EngineSampler:
    """`rows`: (seconds since start, running, waiting, generated so far, prompt tokens so far),
    summed over the servers."""

    def __init__(self, base_urls: list[str], every: float = 0.5) -> None:
        self.base_urls, self.every = base_urls, every
        self.rows: list[tuple[float, float, float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="engine-metrics", daemon=True)
        self._base: dict[str, float] = {}
        self.started = time.monotonic()

    def __enter__(self) -> "EngineSampler":
        self._base = self._read()
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()

    def _read(self) -> dict[str, float]:
        total = {name: 0.0 for name in GAUGES.values()}
        for url in self.base_urls:
            for name, value in read_metrics(url).items():
                total[name] += value
        return total

    def _sample(self) -> None:
        try:
            v = self._read()
        except OSError:
            return
        self.rows.append((time.monotonic() - self.started, v["running"], v["waiting"],
                          v["generated"] - self._base["generated"], v["prompt"] - self._base["prompt"]))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def summary(self) -> dict:
        """How full the engine was kept: time-weighted mean of sequences running, seconds with
        nothing running, and with fewer than 8."""
        if len(self.rows) < 2:
            return {}
        steps = [(b[0] - a[0], a[1]) for a, b in zip(self.rows, self.rows[1:])]
        span = sum(dt for dt, _ in steps)
        return {
            "engine_generated_tokens": int(self.rows[-1][3]),
            "engine_mean_running": round(sum(dt * r for dt, r in steps) / span, 1),
            "engine_peak_running": int(max(r for _, r in steps)),
            "engine_idle_s": round(sum(dt for dt, r in steps if r == 0), 1),
            "engine_under_8_s": round(sum(dt for dt, r in steps if r < 8), 1),
        }
