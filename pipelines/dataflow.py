"""Dataflow specifics of `pipelines.synth`: the worker option managed vLLM servers need, and what a
translated (dry-run) job would ask Dataflow for.

One set of servers per worker VM: Dataflow starts one Python SDK process per vCPU unless told
otherwise, and every process would start its own servers (one per model), each loading the
weights onto the same GPUs. With `--experiments=no_use_multiple_sdk_containers` a VM runs one
SDK process; its threads share one server per model through the process-wide registry, and the
work they do is mostly waiting on HTTP. Added automatically; an explicit choice is kept.
"""
from __future__ import annotations

import logging
from typing import Any

from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions, StandardOptions

log = logging.getLogger("synthpost")
ONE_SDK_PROCESS = "no_use_multiple_sdk_containers"
SDK_PROCESS_CHOICES = {ONE_SDK_PROCESS, "use_multiple_sdk_containers"}


def runs_on_dataflow(beam_args: list[str]) -> bool:
    return "Dataflow" in str(PipelineOptions(beam_args).view_as(StandardOptions).runner or "")


def with_worker_options(beam_args: list[str], uses_managed_vllm: bool) -> list[str]:
    """`beam_args` plus one SDK process per worker VM when Dataflow runs managed vLLM servers."""
    if not (uses_managed_vllm and runs_on_dataflow(beam_args)):
        return beam_args
    experiments = PipelineOptions(beam_args).view_as(DebugOptions).experiments or []
    if SDK_PROCESS_CHOICES & set(experiments):
        return beam_args  # the user chose
    log.info("Dataflow: --experiments=%s (one SDK process per VM, so one vLLM server per model per VM)",
             ONE_SDK_PROCESS)
    return [*beam_args, f"--experiments={ONE_SDK_PROCESS}"]


def job_environment(result: Any, options: PipelineOptions) -> dict[str, Any]:
    """The worker environment Dataflow would receive for a translated job (as a submit builds it)."""
    from apache_beam.runners.dataflow.internal import apiclient

    env = apiclient.Environment([], options, apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION, "",
                                proto_pipeline=result.job.proto_pipeline).proto
    pool = env.worker_pools[0]
    return {"experiments": sorted(env.experiments), "machine_type": pool.machine_type,
            "disk_size_gb": pool.disk_size_gb,
            "worker_harness_threads": pool.num_threads_per_worker or None}
