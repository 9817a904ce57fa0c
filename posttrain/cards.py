"""Model cards for post-trained models: which data, which recipe, what came out.

`write_model_card(dir, ...)` writes `dir/README.md` (hub front matter + sections) next to the
saved weights. Shared by SFT and DPO; everything it states comes from the run's own config,
data report and trainer logs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datagen.inference.model_names import is_hub_id


def save_with_card(trainer, output_dir: str | Path, report, **card: Any) -> Path | None:
    """Save the trainer's model (gathered under FSDP / ZeRO-3), then, on the main process only, the
    tokenizer, the data report and a model card (`card`: write_model_card's keywords)."""
    trainer.save_model(str(output_dir))
    if not trainer.is_world_process_zero():
        return None
    out = Path(output_dir)
    trainer.processing_class.save_pretrained(out)
    report.write(out / "data_report.json")
    return write_model_card(out, data_report=report.to_dict(), **card)


def write_model_card(
    output_dir: str | Path,
    *,
    method: str,
    base_model: str,
    dataset: str,
    recipe: dict[str, Any],
    data_report: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    param_groups: str = "",
    notes: str = "",
    hub_repo: str = "",
    auto_class: str = "AutoModelForCausalLM",
) -> Path:
    """Write README.md in `output_dir` and return its path. `hub_repo`: where the model is pushed
    (the usage snippet loads it from there); `auto_class`: the transformers class that loads it."""
    front: dict[str, Any] = {"library_name": "transformers"}
    if is_hub_id(base_model):
        front["base_model"] = base_model  # the hub links it; local paths and aliases stay in the text
    front["tags"] = ["synthpost", "trl", method.lower().replace(" ", "-")]
    front["pipeline_tag"] = "text-generation" if auto_class == "AutoModelForCausalLM" else "text-classification"
    if is_hub_id(dataset):
        front["datasets"] = [dataset]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {Path(output_dir).name}", ""]
    lines += [f"{method} of `{base_model}` with synthpost (recipe after the Hunyuan-Large report, "
              f"trained with TRL) on `{dataset}`.", ""]
    lines += ["## Data", ""] + _data_section(dataset, data_report) + [""]
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True).rstrip(),
              "```", ""]
    if param_groups:
        lines += ["## Parameter groups", "", "```", param_groups, "```", ""]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in sorted(metrics.items())] + [""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    source = hub_repo or str(output_dir)
    lines += ["## Use", "", "```python", f"from transformers import {auto_class}, AutoTokenizer",
              f"model = {auto_class}.from_pretrained({source!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({source!r})", "```", ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _data_section(dataset: str, report: dict[str, Any] | None) -> list[str]:
    lines = [f"- source: `{dataset}`"]
    if not report:
        return lines
    lines.append(f"- view: `{report.get('view', '')}`")
    lines.append(f"- rows read: {report.get('rows_read', 0)}; train: {report.get('train_rows', 0)}; "
                 f"eval (held out): {report.get('eval_rows', 0)}")
    skipped = report.get("skipped") or {}
    if skipped:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
        lines.append(f"- skipped: {sum(skipped.values())} ({reasons})")
    else:
        lines.append("- skipped: 0")
    if report.get("max_length"):
        lines.append(f"- max length: {report['max_length']} tokens (longer samples skipped, not truncated)")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
