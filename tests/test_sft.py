"""posttrain/sft*.py and posttrain/trainers/sft_data.py: SFT of the tiny hunyuan_v1_moe with TRL on CPU.

The model is built in memory (random weights, SmolLM2's tokenizer); sequences are short so each
training step is a fraction of a second.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datagen.config_loader import load_config
from posttrain.hunyuan.expert_lr import expert_lr_ratio
from posttrain.data import DataError, load_view
from posttrain.moe.recipe import MoEConfig
from posttrain.sft import main
from posttrain.trainers.sft_config import SFTRunConfig
from posttrain.trainers.sft_data import DataConfig, conversation_problem, load_sft_splits
from posttrain.trainers.sft_trainer import build_trainer, train
from posttrain.moe.tiny_moe import build_tiny_moe_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "posttrain" / "sft_tiny.yaml"


def chat(i: int, answer_words: int = 2) -> dict:
    return {"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                         {"role": "assistant", "content": " ".join([f"It is {2 * i}."] * answer_words)}]}


def save_chats(path: Path, rows: list[dict]) -> str:
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def chats(tmp_path_factory):
    return save_chats(tmp_path_factory.mktemp("chats"), [chat(i) for i in range(12)])


def run_config(output_dir, dataset, **overrides) -> SFTRunConfig:
    base = dict(output_dir=str(output_dir), dataset=dataset, max_steps=4, learning_rate=1e-2,
                min_learning_rate=1e-3, per_device_train_batch_size=2, per_device_eval_batch_size=2,
                max_length=64, logging_steps=1, eval_steps=0, save_steps=100, report_to="none",
                data=DataConfig(eval_fraction=0.0),
                moe=MoEConfig(router_aux_loss_coef=0.01, attention_dropout=0.1, hidden_dropout=0.2))
    base.update(overrides)
    return SFTRunConfig(**base)


def train_logs(trainer) -> list[dict]:
    return [h for h in trainer.state.log_history if "loss" in h]


# --------------------------------------------------------------------------- training


def test_training_changes_every_parameter_and_lowers_the_loss(tmp_path, tokenizer):
    repeated = save_chats(tmp_path / "data", [chat(7)] * 8)  # every batch is the same batch
    model = build_tiny_moe_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer, _ = train(run_config(tmp_path / "out", repeated, max_steps=5), model=model, tokenizer=tokenizer)

    unchanged = [n for n, p in model.named_parameters() if n in before and torch.equal(p, before[n])]
    assert unchanged == []  # includes the top-1 router, trained only by the aux loss
    logs = train_logs(trainer)
    losses = [h["loss"] for h in logs]
    assert len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.5
    assert all(h["aux_loss"] > 0 and math.isfinite(h["aux_loss"]) for h in logs)
    # specialized experts train at the ratio derived from the routing (top-1 of 4) and the gradient noise
    # scale measured on the run (posttrain/hunyuan/expert_lr.py) at every step of the schedule
    ratio = expert_lr_ratio(4, 1, 2, trainer.noise_scale.b_simple)
    assert all(h["lr/experts"] == pytest.approx(ratio * h["lr/shared_expert"], rel=1e-3) for h in logs)


def test_optimizer_groups_have_the_configured_learning_rates(tmp_path, tokenizer, chats):
    cfg = run_config(tmp_path, chats, learning_rate=2e-5, min_learning_rate=2e-6,
                     moe=MoEConfig(expert_lr_ratio=0.31, router_lr_ratio=0.5, freeze_router=False))
    trainer, _ = build_trainer(cfg, model=build_tiny_moe_model(tokenizer), tokenizer=tokenizer)
    optimizer = trainer.create_optimizer()
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"router": 1e-5, "shared_expert": 2e-5, "experts": 6.2e-6, "norms": 2e-5,
                                 "embeddings": 2e-5, "attention": 2e-5})


def test_router_aux_loss_is_part_of_the_trainer_loss(tmp_path, tokenizer, chats):
    model = build_tiny_moe_model(tokenizer)
    no_dropout = dict(attention_dropout=0.0, hidden_dropout=0.0)
    with_aux, _ = build_trainer(run_config(tmp_path, chats, moe=MoEConfig(router_aux_loss_coef=0.5, **no_dropout)),
                                model=model, tokenizer=tokenizer)
    batch = next(iter(with_aux.get_train_dataloader()))
    loss_with_aux = with_aux.compute_loss(model, dict(batch)).item()
    aux = with_aux._metrics["train"]["aux_loss"][-1]

    without_aux, _ = build_trainer(run_config(tmp_path, chats, moe=MoEConfig(router_aux_loss_coef=0.0, **no_dropout)),
                                   model=model, tokenizer=tokenizer)
    loss_without_aux = without_aux.compute_loss(model, dict(batch)).item()
    assert aux > 0.5  # E * sum(f_i * P_i) is 1.0 for perfect balance
    assert loss_with_aux - loss_without_aux == pytest.approx(0.5 * aux, rel=1e-3)


class KillAtStep:
    """Simulates a crash: the run dies right after this optimizer step."""

    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, event):  # every other TrainerCallback event is a no-op
        return lambda *args, **kwargs: None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed at step {self.step}")


def test_a_killed_run_resumes_where_it_stopped(tmp_path, tokenizer, chats):
    def fresh_model():
        return build_tiny_moe_model(tokenizer, seed=0)

    full, _ = train(run_config(tmp_path / "full", chats, save_steps=2), model=fresh_model(), tokenizer=tokenizer)

    killed_cfg = run_config(tmp_path / "killed", chats, save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        train(killed_cfg, model=fresh_model(), tokenizer=tokenizer, callbacks=[KillAtStep(3)])
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint-*")) == ["checkpoint-2"]
    resumed, _ = train(killed_cfg, model=fresh_model(), tokenizer=tokenizer)  # same command again

    assert resumed.state.global_step == 4
    full_logs, resumed_logs = train_logs(full), train_logs(resumed)
    assert [h["step"] for h in resumed_logs] == [1, 2, 3, 4]  # 1-2 restored from the checkpoint, 3-4 retrained
    for a, b in zip(full_logs, resumed_logs):
        assert b["learning_rate"] == pytest.approx(a["learning_rate"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    full_state = full.optimizer.state_dict()["state"]
    resumed_state = resumed.optimizer.state_dict()["state"]
    for key, state in full_state.items():
        assert torch.allclose(state["exp_avg"], resumed_state[key]["exp_avg"], atol=1e-6)
        assert state["step"] == resumed_state[key]["step"] == 4
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_command_line_run_leaves_a_loadable_model_and_card(tmp_path, chats, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    code = main(["--config", str(TINY_RECIPE), "--dataset", chats, "--output_dir", str(out), "--max_steps", "2",
                 "--max_length", "64", "--per_device_train_batch_size", "2", "--data.eval_fraction", "0.25"])
    assert code == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "hunyuan_v1_moe"
    assert (model.config.attention_dropout, model.config.hidden_dropout) == (0.1, 0.2)
    card = (out / "README.md").read_text()
    assert chats in card and "expert_lr_ratio: 0.31" in card and "eval_loss" in card
    report = json.loads((out / "data_report.json").read_text())
    assert (report["train_rows"], report["eval_rows"], report["skipped"]) == (9, 3, {})
    assert list((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard by default


def test_command_line_names_a_missing_dataset(tmp_path, capsys):
    code = main(["--config", str(TINY_RECIPE), "--dataset", str(tmp_path / "nope"), "--output_dir", str(tmp_path)])
    assert code == 2
    assert f"dataset {tmp_path / 'nope'} not found" in capsys.readouterr().err


def test_recipe_files_load_with_overrides():
    cfg = load_config(SFTRunConfig, TINY_RECIPE, ["--output_dir", "x", "--max_steps", "5", "--dataset", "d"])
    assert (cfg.output_dir, cfg.max_steps, cfg.dataset, cfg.model.name) == ("x", 5, "d", "tiny-hunyuan-moe")
    hunyuan = load_config(SFTRunConfig, TINY_RECIPE.with_name("sft_hunyuan.yaml"))
    assert (hunyuan.num_train_epochs, hunyuan.learning_rate, hunyuan.min_learning_rate) == (3, 2e-5, 2e-6)
    assert (hunyuan.moe.attention_dropout, hunyuan.moe.hidden_dropout, hunyuan.moe.expert_lr_ratio) == (0.1, 0.2, 0.31)


# --------------------------------------------------------------------------- data


def test_bad_and_overlong_conversations_are_skipped_and_counted(tmp_path, tokenizer):
    rows = [chat(i) for i in range(6)]
    rows.append(chat(99, answer_words=60))  # ~300 tokens > max_length
    rows.append({"messages": [{"role": "user", "content": "no answer"}]})
    rows.append({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]})
    rows.append({"messages": []})
    source = save_chats(tmp_path / "data", rows)
    train_rows, eval_rows, report = load_sft_splits(source, DataConfig(eval_fraction=0.2), tokenizer, max_length=64)
    assert report.skipped == {"longer_than_max_length": 1, "last_turn_not_assistant": 1, "empty_content": 1,
                              "empty_messages": 1}
    assert (report.rows_read, len(train_rows), len(eval_rows)) == (10, 5, 1)
    assert train_rows.column_names == ["prompt", "completion"]
    assert train_rows[0]["completion"][0]["role"] == "assistant"
    assert "4 skipped" in report.summary()


def test_datagen_output_directory_is_read_through_its_sft_view(tmp_path, tokenizer):
    from datasets import Dataset

    (tmp_path / "data").mkdir(), (tmp_path / "sft").mkdir()
    Dataset.from_list([{"instruction": "x"}]).to_parquet(str(tmp_path / "data" / "train-0.parquet"))
    Dataset.from_list([chat(i) for i in range(4)]).to_parquet(str(tmp_path / "sft" / "train-0.parquet"))
    (tmp_path / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files: data/*.parquet\n"
        "- config_name: sft\n  data_files: sft/*.parquet\n---\n# card\n")
    assert len(load_view(str(tmp_path), "sft")) == 4
    with pytest.raises(DataError, match=r"has no view 'dpo' \(configs: default, sft;"):
        load_view(str(tmp_path), "dpo")


def test_a_directory_rewritten_in_place_is_read_anew(tmp_path):
    """A second synth run to the same --output: training must see its rows, not the cached first run's."""
    import time

    from datasets import Dataset

    (tmp_path / "sft").mkdir()
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: sft\n  data_files: sft/*.parquet\n---\n")
    for rows in (5, 3):
        Dataset.from_list([chat(i) for i in range(rows)]).to_parquet(str(tmp_path / "sft" / "train-0.parquet"))
        assert len(load_view(str(tmp_path), "sft")) == rows
        time.sleep(0.05)  # a later modification time for the rewrite


def test_plain_jsonl_file_is_read_whatever_the_view(tmp_path):
    from datasets import Dataset

    Dataset.from_list([chat(i) for i in range(3)]).to_json(str(tmp_path / "chats.jsonl"))
    assert load_view(str(tmp_path / "chats.jsonl"), "sft").column_names == ["messages"]
    assert len(load_view(str(tmp_path), "sft")) == 3  # a folder of JSONL files


def test_missing_column_and_empty_dataset_are_clear_errors(tmp_path, tokenizer):
    from datasets import Dataset

    wrong = save_chats(tmp_path / "wrong", [{"text": "hello"}])
    with pytest.raises(DataError, match="lacks column.s. messages .columns: text."):
        load_sft_splits(wrong, DataConfig(), tokenizer, 64)
    empty_saved = tmp_path / "empty"
    Dataset.from_list([chat(1)]).select([]).save_to_disk(str(empty_saved))
    with pytest.raises(DataError, match=r"is empty"):
        load_sft_splits(str(empty_saved), DataConfig(), tokenizer, 64)
    empty_file = tmp_path / "empty.parquet"
    Dataset.from_list([chat(1)]).select([]).to_parquet(str(empty_file))
    with pytest.raises(DataError, match=r"cannot read dataset .*empty.parquet: .*corresponds to no data"):
        load_sft_splits(str(empty_file), DataConfig(), tokenizer, 64)
    too_long = save_chats(tmp_path / "long", [chat(1, answer_words=60)] * 3)
    with pytest.raises(DataError, match="no usable training rows.*longer_than_max_length=3"):
        load_sft_splits(too_long, DataConfig(eval_fraction=0.0), tokenizer, 64)


def test_unknown_source_says_how_to_make_one(tmp_path):
    with pytest.raises(DataError, match="not found: no such file or directory.*Run the datagen demo first"):
        load_view(str(tmp_path / "missing"), "sft")
    # `out/synth` could be a hub id too: offline, the error still says what to do
    with pytest.raises(DataError, match="dataset out/no-such-run not found.*hub.*Run the datagen demo first"):
        load_view("out/no-such-run", "sft")


@pytest.mark.parametrize("messages, reason", [
    ("hello", "messages_not_a_list"),
    ([{"role": "user"}], "malformed_turn"),
    ([{"role": "robot", "content": "x"}], "unknown_role"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "no_user_turn"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], ""),
])
def test_conversation_problems_are_named(messages, reason):
    assert conversation_problem(messages) == reason
