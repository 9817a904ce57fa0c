"""The progress line: records done per stage, and records still waiting on the model."""
from __future__ import annotations

import threading

from datagen import progress
from datagen.stages.evolve import EvolveConfig, EvolveStage
from datagen.record import Record
from fakes import FakeLLM, install_fake
from stage_harness import run_transform


def test_line_shows_done_records_and_records_at_the_model():
    progress.reset()
    progress.record("generate", 3, 120)
    progress.waiting("respond", +1)
    progress.waiting("respond", +1)
    printer = progress.ProgressPrinter(["seeds", "generate", "respond"])
    line = printer.line()
    assert "generate 3 · respond 0 (+2 at the model)" in line and "120 tokens generated" in line
    assert "seeds" not in line  # a stage shows up once it has done or started something
    progress.waiting("respond", -2)
    assert "at the model" not in printer.line()
    progress.reset()


def test_an_llm_stage_leaves_nothing_in_flight_and_counts_every_record():
    progress.reset()
    model = install_fake(FakeLLM(lambda req: "Explain clearly why the sky looks blue at noon?", name="p"),
                         "progress-test")
    records = [Record(f"s{i}", domain="science", instruction=f"Why is the sky blue at {i} o'clock?")
               for i in range(5)]
    run_transform(records, EvolveStage(EvolveConfig(operations=["clarify"]), {"default": model}), ["evolve"])
    done, _ = progress.snapshot()
    assert done["evolve"] == 5 and progress.in_flight() == {}
    progress.reset()


def test_timeline_keeps_a_row_per_sample_and_one_at_the_end():
    progress.reset()
    with progress.Timeline(every=0.05) as timeline:
        progress.waiting("respond", +1)
        for _ in range(200):  # until the sampler has seen the record at the model
            if timeline.rows:
                break
            threading.Event().wait(0.05)
        progress.waiting("respond", -1)
        progress.record("respond", 1, 40)
    first, last = timeline.rows[0], timeline.rows[-1]
    assert len(timeline.rows) >= 2 and first[2] == {"respond": 1}
    assert last[1:] == ({"respond": 1}, {}, 40) and last[0] >= first[0]
    progress.reset()
