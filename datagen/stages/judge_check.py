"""The judge check: before any stage, the critique judge grades the shipped calibration pairs.

`judge_check`: the critique judge grades the calibration pairs (datagen/filters/calibration.py); stats.json's `judge_check` gives the AUC beside the
AUC of graders that do not read the answers (prefer-the-longer, first-graded), and a judge below 0.6 is
reported as filtering nothing meaningful; `min_auc` stops such a run before it starts, as does (with
`must_beat_length`) a judge not above the prefer-the-longer baseline. It runs where the judge runs:
from the launcher when the judge is reachable from there (`judge_check_where: auto` on a local runner,
or an `openai` endpoint), else as the job's first step (`JudgeCheckStage`): the seeds' records reach the
first model stage through a gate that reads the check's result as a side input, so no stage starts
before the check has passed, and a failed check fails the job.
"""
from __future__ import annotations

import json
import logging
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from datagen.filters import calibration
from datagen.inference.registry import ModelConfig, get_llm
from datagen.record import Record
from datagen.stages.critique import CritiqueConfig, critique_requests, read_critique

log = logging.getLogger(__name__)

JUDGE_CHECK_FILE = "judge_check.json"  # written into the output directory by the check inside a job


class JudgeCheckFailed(ValueError):
    """The judge scored the calibration pairs below `critique.min_auc`, or not above the length baseline."""


def calibration_pairs(cfg: CritiqueConfig) -> list[calibration.CalibrationPair]:
    """The pairs the judge check grades: `cfg.calibration_file`'s, else the shipped ones."""
    return calibration.load_pairs(cfg.calibration_file or calibration.CALIBRATION_FILE)


def judge_check(cfg: CritiqueConfig, llm, pairs: Sequence[calibration.CalibrationPair] | None = None) -> dict:
    """The judge grades every calibration pair's good and bad answer (one call each, through `llm`,
    so cached like any call; the good answer first in every other pair); returns stats.json's
    `judge_check` (datagen/filters/calibration.py). `pairs`: default `calibration_pairs(cfg)`."""
    pairs = calibration_pairs(cfg) if pairs is None else pairs
    first = calibration.good_first(pairs)
    order = [(p.good, p.bad) if good_first else (p.bad, p.good) for p, good_first in zip(pairs, first)]
    requests = critique_requests([(p.question, answer) for p, answers in zip(pairs, order) for answer in answers],
                                 cfg)
    hits_before = getattr(llm, "hits", 0)  # a CachedLLM counts its hits; these calls run outside Beam's metrics
    graded = [read_critique(c, cfg) if c.ok else None for c in llm.generate(requests)]
    in_order = list(zip(graded[0::2], graded[1::2]))
    good = [a if good_first else b for (a, b), good_first in zip(in_order, first)]
    bad = [b if good_first else a for (a, b), good_first in zip(in_order, first)]
    check = calibration.summarize(pairs, good, bad, cfg.grading, cfg.aspects, first)
    check["model"] = llm.identity
    check["calls"] = len(requests)
    check["calls_from_cache"] = getattr(llm, "hits", 0) - hits_before
    return check


def enforce_min_auc(check: dict, cfg: CritiqueConfig) -> None:
    """Stop the run (JudgeCheckFailed) when `min_auc` > 0 and the judge is below it or, with
    `must_beat_length`, not above the prefer-the-longer baseline on the same pairs."""
    failure = calibration.gate_failure(check, cfg.min_auc, cfg.must_beat_length)
    if failure:
        raise JudgeCheckFailed(failure)


def log_check(check: dict) -> None:
    """The check in one log line, wherever it ran; a weak judge gets a warning line too."""
    base = check.get("baselines") or {}
    log.info("judge check (%s): AUC %.2f on %d calibration pairs (%s grades of %s; sampled %.2f%s); "
             "prefer-the-longer %.2f, first-graded %.2f", check.get("where", "launcher"), check["auc"],
             check["pairs"], check["grading"], "+".join(check["aspects"]), check["auc_sampled"],
             "" if check["auc_logprobs"] is None else f", logprobs {check['auc_logprobs']:.2f}",
             base.get("longer", float("nan")), base.get("first_graded", float("nan")))
    warning = calibration.warning_line(check)
    if warning:
        log.warning("%s", warning)


def read_check(out_dir: str) -> dict | None:
    """What the check inside the job wrote (None when it did not run)."""
    path = FileSystems.join(out_dir, JUDGE_CHECK_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))


class _GradeCalibrationPairs(beam.DoFn):
    """On the worker: the judge (the model the critique stage will use there) grades all pairs at once,
    the result goes to the output directory, and a judge that fails the gate fails the job."""

    def __init__(self, cfg: CritiqueConfig, model: ModelConfig, out_dir: str) -> None:
        self.cfg, self.model, self.out_dir = cfg, model, out_dir

    def process(self, indexed_pairs: list[tuple[int, calibration.CalibrationPair]]):
        pairs = [pair for _, pair in sorted(indexed_pairs, key=lambda item: item[0])]
        check = {**judge_check(self.cfg, get_llm(self.model), pairs), "where": "job"}
        with FileSystems.create(FileSystems.join(self.out_dir, JUDGE_CHECK_FILE)) as f:
            f.write(json.dumps(check, indent=2).encode("utf-8"))
        log_check(check)
        enforce_min_auc(check, self.cfg)
        yield check


def _after_the_check(record: Record, check: dict) -> Record:
    return record


class JudgeCheckStage(beam.PTransform):
    """records → the same records, once the judge check has passed: the job's first step where the judge
    runs on the workers. The pairs are read here (the launcher's calibration_file), graded on a worker,
    and the records pass a gate that reads the check as a side input — in a batch job nothing
    downstream of the gate starts before the check has finished, and a failed check fails the job."""

    def __init__(self, cfg: CritiqueConfig, model: ModelConfig, out_dir: str) -> None:
        super().__init__()
        self.cfg, self.model, self.out_dir = cfg, model, out_dir
        self.pairs = calibration_pairs(cfg)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        check = (records.pipeline
                 | "pairs" >> beam.Create(list(enumerate(self.pairs)))
                 | "collect" >> beam.combiners.ToList()
                 | "grade" >> beam.ParDo(_GradeCalibrationPairs(self.cfg, self.model, self.out_dir)))
        return records | "gate" >> beam.Map(_after_the_check, check=beam.pvalue.AsSingleton(check))
