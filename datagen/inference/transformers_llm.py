"""In-process transformers backend: batched `generate`, for unit tests and tiny models.

One worker thread owns the model; requests queue up and run in batches (same sampling
params grouped), so many concurrent `submit`s still become a few `generate` calls.
"""
from __future__ import annotations

import concurrent.futures as cf
import queue
import threading
from typing import Sequence

from datagen.inference.base import Completion, InferenceError, Request
from datagen.inference.model_names import setup_model_types, weights_fingerprint


class TransformersLLM:
    def __init__(self, model_path: str, name: str = "", max_batch: int = 16,
                 trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        setup_model_types()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=torch.float32, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise InferenceError(f"cannot load model {model_path}: {str(err).splitlines()[0]}") from None
        self.model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        weights = weights_fingerprint(model_path)  # a directory retrained in place gets new cache keys
        self.identity = f"transformers:{name or model_path}{'@' + weights if weights else ''}"
        self.max_batch = max_batch
        self._queue: "queue.Queue[tuple[Request, cf.Future] | None]" = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="transformers-llm", daemon=True)
        self._worker.start()

    def submit(self, request: Request) -> "cf.Future[Completion]":
        future: cf.Future = cf.Future()
        self._queue.put((request, future))
        return future

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return [f.result() for f in [self.submit(r) for r in requests]]

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            groups: dict = {}
            for req, fut in batch:
                groups.setdefault(req.params, []).append((req, fut))
            for params, members in groups.items():
                try:
                    outs = self._run([r for r, _ in members])
                except Exception as err:  # noqa: BLE001 - a reason, never a crash
                    outs = [Completion(error=f"{type(err).__name__}: {err}") for _ in members]
                for (_, fut), out in zip(members, outs):
                    fut.set_result(out)

    def _prompt_text(self, req: Request) -> str:
        if req.messages:
            return self.tokenizer.apply_chat_template(
                req.message_dicts(), tokenize=False, add_generation_prompt=True)
        return req.prompt or ""

    def _run(self, requests: list[Request]) -> list[Completion]:
        import torch

        p = requests[0].params
        texts = [self._prompt_text(r) for r in requests]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        if p.seed is not None:
            torch.manual_seed(p.seed)
        sample = p.temperature > 0
        kwargs = dict(max_new_tokens=p.max_tokens, num_return_sequences=p.n, do_sample=sample,
                      pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            kwargs.update(temperature=p.temperature, top_p=p.top_p)
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        results = []
        for i in range(len(requests)):
            rows = new[i * p.n:(i + 1) * p.n]
            decoded, reasons, n_tokens = [], [], 0
            for row in rows:
                ids = row.tolist()
                eos = self.tokenizer.eos_token_id
                length = ids.index(eos) if eos in ids else len(ids)
                n_tokens += length
                reasons.append("stop" if length < len(ids) else "length")
                decoded.append(self._apply_stop(self.tokenizer.decode(ids[:length], skip_special_tokens=True), p.stop))
            results.append(Completion(texts=decoded, finish_reasons=reasons,
                                      prompt_tokens=int(enc["attention_mask"][i].sum()),
                                      completion_tokens=n_tokens))
        return results

    @staticmethod
    def _apply_stop(text: str, stops: tuple[str, ...]) -> str:
        for stop in stops:
            if stop and stop in text:
                text = text[: text.index(stop)]
        return text
