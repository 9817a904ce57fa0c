"""The loop's steps, built from a LoopConfig: what each one runs, in which directory, from which inputs.

    prompts  verifiable math problems           → DIR/prompts (disjoint from the eval set; the first
                                                               `prompts.referenced` also as referenced seeds)
    synth    python -m pipelines.synth          → DIR/synth   (the seed corpus + the referenced problems;
                                                               the eval sets as decontam benchmarks)
    sft      posttrain/sft.py                   → DIR/sft     (from the start model, on DIR/synth)
    dpo      posttrain/dpo.py                   → DIR/dpo     (from DIR/sft; offline pairs DIR/synth,
                                                               online prompts DIR/prompts)
    rm       posttrain/rm.py (when rm.config)   → DIR/rm      (a reward model on DIR/synth's pairs: the reward
                                                               of every DPO step with reward.kind classifier
                                                               and no reward.model)
    dpo-V    one per variant                    → DIR/dpo-V
    eval-P   python -m pipelines.eval, P vs the start, for every trained policy → DIR/eval-P
    table    results.md, results.json, charts/  (always rebuilt from the evals)

Each step writes the exact config it ran (`DIR/<step>/loop-config.yaml`) and its log (`log.txt`).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from datagen.readers import eval_sets
from datagen.config_loader import ConfigError, from_dict
from pipelines.looping import math_train
from pipelines.looping.commands import run_logged
from pipelines.looping.loop_config import RAW_KEY, LoopConfig, step_config
from pipelines.looping.steps import LoopError, Step, fingerprint

ROOT = Path(__file__).resolve().parents[2]
SEEDS_DIR = "seeds"  # prompts/seeds/: the synth step's seeds when prompts.referenced > 0


@dataclass
class Policy:
    """A model the table reports: its name, the step that makes it and where its weights are."""

    name: str  # start, sft, dpo, dpo-<variant>, dpo-raw
    step: str  # the step whose directory holds it ("" for the start model)
    path: Callable[[], str]  # resolved when the eval runs (a raw checkpoint exists only then)


def write_config(step: Step, data: dict) -> Path:
    step.directory.mkdir(parents=True, exist_ok=True)
    path = step.directory / "loop-config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def check(cls: type, data: dict, step: str) -> None:
    """Build the command's config dataclass now, so a bad key fails before any step runs."""
    try:
        from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{step}: {err}") from None


class LoopPlan:
    """Every step of one loop run, in order; `policies` for the table."""

    def __init__(self, cfg: LoopConfig, start_model: str, env: dict[str, str]) -> None:
        self.cfg, self.start, self.env = cfg, start_model, env
        self.out = Path(cfg.output).resolve()
        self.steps: list[Step] = []
        self.policies: list[Policy] = [Policy("start", "", lambda: start_model)]
        self.evals: dict[str, Step] = {}
        prompts = self.prompts_step()
        synth = self.synth_step(prompts)
        sft = self.sft_step(synth)
        rm = self.rm_step(synth) if cfg.rm.config else None
        dpos = [(self.dpo_step("dpo", {}, sft, synth, prompts, rm), cfg.dpo.raw_checkpoint)]
        for name, changes in cfg.variants.items():
            changes = {k: v for k, v in changes.items() if k != RAW_KEY}
            dpos.append((self.dpo_step(f"dpo-{name}", changes, sft, synth, prompts, rm),
                         cfg.variants[name].get(RAW_KEY, False)))
        self.eval_step(Policy("sft", "sft", lambda: str(sft.directory)), sft)
        for dpo, _ in dpos:
            self.eval_step(Policy(dpo.name, dpo.name, lambda d=dpo: str(d.directory)), dpo)
        for dpo, raw in dpos:
            if raw:
                self.eval_step(Policy(f"{dpo.name}-raw", dpo.name, lambda d=dpo: str(last_checkpoint(d.directory))),
                               dpo)

    def add(self, name: str, parts: tuple, run: Callable[[Step], dict]) -> Step:
        step = Step(name, self.out / name, fingerprint(name, *parts), run)
        self.steps.append(step)
        return step

    def command(self, argv: list[str], step: Step) -> None:
        run_logged(argv, step.directory / "log.txt", step.name, env=self.env, cwd=str(ROOT))

    # ------------------------------------------------------------------ synth and prompts

    def synth_step(self, prompts: Step) -> Step:
        from pipelines.synth_config import SynthConfig

        changes: dict[str, Any] = {"output.dir": str(self.out / "synth")}
        if self.cfg.prompts.referenced:  # the seed corpus and the referenced training problems, side by side
            changes["seeds.path"] = str(prompts.directory / SEEDS_DIR)
        if self.cfg.synth.decontaminate:
            base = step_config(self.cfg.synth.config, {}).get("decontam", {}).get("benchmarks", [])
            changes["decontam.benchmarks"] = list(base) + [f for f in self.benchmark_files() if f not in base]
        data = step_config(self.cfg.synth.config, {**changes, **self.cfg.synth.set})
        check(SynthConfig, data, "synth")

        def run(step: Step) -> dict:
            path = write_config(step, data)
            self.command([sys.executable, "-m", "pipelines.synth", "--config", str(path)], step)
            return synth_summary(step.directory)

        return self.add("synth", (data, prompts.fingerprint), run)

    def benchmark_files(self) -> list[str]:
        """The eval sets that the synth config's `decontam.eval_sets` does not name already, as decontam
        benchmark files (HumanEval written out from its package). The default names all three: adding them
        again counted every item twice in the rare-bigram test, and 24 of the 364 items the paraphrase
        test can see were then not found even verbatim."""
        from pipelines.synth_config import SynthConfig

        try:
            named = from_dict(SynthConfig, step_config(self.cfg.synth.config, self.cfg.synth.set)).decontam.eval_sets
        except ConfigError as err:
            raise ConfigError(f"synth: {err}") from None
        files = [str(eval_sets.EVAL_DIR / f"{name}.jsonl") for name in ("math", "judge") if name not in named]
        if "code" not in named:
            code = self.out / "benchmarks" / "humaneval.jsonl"
            if not code.is_file():
                code.parent.mkdir(parents=True, exist_ok=True)
                code.write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_sets.benchmark_texts("code")),
                                encoding="utf-8")
            files.append(str(code))
        return files

    def prompts_step(self) -> Step:
        count, seed, referenced = self.cfg.prompts.count, self.cfg.prompts.seed, self.cfg.prompts.referenced
        eval_questions = [item["question"] for item in eval_sets.load("math")]
        corpus = self.seed_corpus() if referenced else None

        def run(step: Step) -> dict:
            rows, dropped = math_train.disjoint_from_eval(math_train.make_problems(count, seed), eval_questions)
            step.directory.mkdir(parents=True, exist_ok=True)
            write_jsonl(step.directory / "math_train.jsonl", rows)
            if corpus is not None:
                seeds = step.directory / SEEDS_DIR
                seeds.mkdir(exist_ok=True)
                (seeds / corpus.name).write_bytes(corpus.read_bytes())
                write_jsonl(seeds / "referenced_math.jsonl", [math_train.as_seed(r) for r in rows[:referenced]])
            levels = {str(level): sum(r["level"] == level for r in rows) for level in (1, 2, 3, 4)}
            return {"problems": len(rows), "referenced_seeds": min(referenced, len(rows)),
                    "dropped_for_eval_overlap": dropped, "by_level": levels}

        return self.add("prompts", (count, seed, referenced, eval_questions, str(corpus)), run)

    def seed_corpus(self) -> Path:
        """The synth config's seed file (the shipped corpus when it names none), copied beside the
        referenced problems."""
        from datagen import SHIPPED_SEEDS

        path = step_config(self.cfg.synth.config, self.cfg.synth.set).get("seeds", {}).get("path") or SHIPPED_SEEDS
        if not Path(path).is_file():
            raise ConfigError(f"prompts.referenced: the synth seeds ({path}) must be one local file to be joined "
                              f"by the referenced problems; set prompts.referenced: 0 to keep them as they are")
        return Path(path)

    # ------------------------------------------------------------------ training

    def sft_step(self, synth: Step) -> Step:
        from posttrain.trainers.sft_config import SFTRunConfig

        section = self.cfg.sft
        data = step_config(section.config, {"output_dir": str(self.out / "sft"), "dataset": str(synth.directory),
                                            "model.name": self.start, **section.set})
        check(SFTRunConfig, data, "sft")

        def run(step: Step) -> dict:
            path = write_config(step, data)
            self.command(self.trainer(section.launcher, "sft.py") + ["--config", str(path)], step)
            return read_summary(last_trainer_state(step.directory), step.directory)

        return self.add("sft", (data, synth.fingerprint), run)

    def rm_step(self, synth: Step) -> Step:
        from posttrain.trainers.rm_config import RMRunConfig

        section = self.cfg.rm
        data = step_config(section.config, {"output_dir": str(self.out / "rm"), "dataset": str(synth.directory),
                                            "model": self.start, **section.set})
        check(RMRunConfig, data, "rm")

        def run(step: Step) -> dict:
            path = write_config(step, data)
            self.command(self.trainer(section.launcher, "rm.py") + ["--config", str(path)], step)
            return rm_summary(step.directory)

        return self.add("rm", (data, synth.fingerprint), run)

    def dpo_step(self, name: str, changes: dict, sft: Step, synth: Step, prompts: Step, rm: Step | None) -> Step:
        from posttrain.trainers.dpo_config import DPORunConfig

        section = self.cfg.dpo
        data = step_config(section.config, {
            "output_dir": str(self.out / name), "model.name": str(sft.directory), "dataset": str(synth.directory),
            "online.prompts": str(prompts.directory / "math_train.jsonl"), **section.set, **changes})
        upstream = (sft.fingerprint, synth.fingerprint, prompts.fingerprint)
        reward = data.get("reward") or {}
        if rm is not None and reward.get("kind", "classifier") == "classifier" and not reward.get("model"):
            data.setdefault("reward", {})["model"] = str(rm.directory)  # the loop's own reward model
            upstream += (rm.fingerprint,)
        check(DPORunConfig, data, name)

        def run(step: Step) -> dict:
            path = write_config(step, data)
            self.command(self.trainer(section.launcher, "dpo.py") + ["--config", str(path)], step)
            return dpo_summary(step.directory)

        return self.add(name, (data, *upstream), run)

    def trainer(self, launcher: list[str], script: str) -> list[str]:
        return (list(launcher) or [sys.executable]) + [str(ROOT / "posttrain" / script)]

    # ------------------------------------------------------------------ eval

    def eval_step(self, policy: Policy, upstream: Step) -> Step:
        from pipelines.evaluation.eval_config import EvalConfig

        section, name = self.cfg.eval, f"eval-{policy.name}"
        changes = {"model": "policy", "baseline": "start", "judge": "judge", "tasks": list(section.tasks),
                   "limit": section.limit, "output": str(self.out / name), "models.policy.model": "(set at run time)",
                   "models.start.model": self.start, "models.judge.model": section.judge, **section.set}
        data = step_config(section.config, changes)
        check(EvalConfig, data, name)

        def run(step: Step) -> dict:
            final = step_config(section.config, {**changes, "models.policy.model": policy.path()})
            path = write_config(step, final)
            self.command([sys.executable, "-m", "pipelines.eval", "--config", str(path)], step)
            return {"results": str(step.directory / "results.json")}

        self.policies.append(policy)
        step = self.add(name, (data, policy.name, upstream.fingerprint), run)
        self.evals[policy.name] = step
        return step


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def last_checkpoint(directory: Path) -> Path:
    from posttrain.checkpoints import find_checkpoint

    found = find_checkpoint(directory, "auto")
    if found is None:
        raise ConfigError(f"dpo.raw_checkpoint: {directory} holds no complete checkpoint (keep_checkpoints >= 1)")
    return found


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def synth_summary(directory: Path) -> dict:
    """Records in and kept, with the rejections by stage; LoopError when nothing was kept (SFT has no data)."""
    stages = read_json(directory / "stats.json").get("stages", {})
    if not stages:
        raise LoopError(f"step synth wrote no {directory / 'stats.json'}: see {directory / 'log.txt'}")
    first, last = next(iter(stages.values())), list(stages.values())[-1]
    rejected = {name: sum(s["rejected"].values()) for name, s in stages.items() if s["rejected"]}
    summary = {"seeds": first["in"], "kept": last["kept"], "rejected_by_stage": rejected}
    if last["kept"] == 0:
        raise LoopError(f"step synth kept no records of {first['in']} seeds (rejected by stage: {rejected}); SFT "
                        f"needs data: use more seeds, or point sft.set.dataset and dpo.set.dataset at a dataset. "
                        f"Remove {directory} before rerunning with another synth config")
    return summary


def read_summary(state_file: Path, directory: Path) -> dict:
    history = read_json(state_file).get("log_history", [])
    losses = [h["loss"] for h in history if "loss" in h]
    return {"steps": read_json(state_file).get("global_step"), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "model": str(directory)}


def last_trainer_state(directory: Path) -> Path:
    """The newest checkpoint's trainer_state.json (it holds the whole log), else the directory's own."""
    states = sorted(directory.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.rsplit("-", 1)[1]))
    return states[-1] if states else directory / "trainer_state.json"


def rm_summary(directory: Path) -> dict:
    """Steps, losses and the held-out pair accuracy of the reward model (its metrics.json)."""
    summary = read_summary(last_trainer_state(directory), directory)
    metrics = read_json(directory / "metrics.json")
    summary.update({k: metrics[k] for k in ("eval_accuracy", "eval_loss") if k in metrics})
    return summary


def dpo_summary(directory: Path) -> dict:
    summary = read_json(directory / "dpo_summary.json")
    keep = ("weights", "global_step", "pairs_skipped_total", "offline_pairs", "reward_running_mean")
    out = {k: summary.get(k) for k in keep}
    rounds = sorted((directory / "rounds").glob("round-*.jsonl"))
    out["rounds"] = len(rounds)
    return out
