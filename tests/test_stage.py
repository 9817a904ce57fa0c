"""LLMStageFn's machinery: records leave in the order their model calls finish."""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import threading

from datagen.inference.base import Completion, Request
from datagen.record import Record
from datagen.stage import LLMStageFn
from fakes import install_fake


class GatedLLM:
    """Futures that finish only when the test says so."""

    def __init__(self) -> None:
        self.futures: dict[str, cf.Future] = {}

    def submit(self, request: Request) -> cf.Future:
        return self.futures.setdefault(request.messages[-1][1], cf.Future())

    def finish(self, prompt: str) -> None:
        self.futures[prompt].set_result(Completion(texts=[prompt.upper()]))

    def close(self) -> None:
        pass


class Echo(LLMStageFn):
    stage = "echo"

    def requests(self, record):
        return [Request.chat(record.instruction)]

    def complete(self, record, completions):
        return dataclasses.replace(record, instruction=completions[0].texts[0])


def stage_with(llm: GatedLLM, max_inflight: int = 512) -> Echo:
    model = install_fake(llm, "gated")
    fn = Echo(model, max_inflight=max_inflight)
    fn.setup()
    fn.start_bundle()
    return fn


def texts(outputs) -> list[str]:
    return [getattr(o, "value", o).instruction for o in outputs]


def test_records_leave_in_completion_order_not_input_order():
    llm = GatedLLM()
    fn = stage_with(llm)
    assert list(fn.process(Record("s", instruction="a"))) == []
    assert list(fn.process(Record("s", instruction="b"))) == []
    llm.finish("b")
    assert texts(fn.process(Record("s", instruction="c"))) == ["B"]  # a is still running
    llm.finish("c")
    assert texts(fn.process(Record("s", instruction="d"))) == ["C"]  # a still holds back nothing
    llm.finish("a")
    llm.finish("d")
    assert sorted(texts(fn.finish_bundle())) == ["A", "D"]


def test_a_full_stage_waits_for_the_first_record_to_finish():
    llm = GatedLLM()
    fn = stage_with(llm, max_inflight=1)
    assert list(fn.process(Record("s", instruction="a"))) == []
    threading.Timer(0.2, llm.finish, args=["a"]).start()
    assert texts(fn.process(Record("s", instruction="b"))) == ["A"]  # blocked until a finished
    llm.finish("b")
    assert texts(fn.finish_bundle()) == ["B"]
