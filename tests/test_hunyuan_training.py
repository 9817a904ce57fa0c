"""The native Hunyuan module in our trainers: the router learns under SFT and DPO, the expert load
is logged, the aux loss is in the loss exactly once, and the experts' learning rate is derived
from the routing unless fixed."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from datagen.config_loader import ConfigError
from posttrain.online import round_state
from posttrain.trainers import dpo_trainer
from posttrain.trainers.dpo_config import DPORunConfig
from posttrain.ema import EMAConfig
from posttrain.moe.expert_load import ExpertLoad
from posttrain.hunyuan.configuration import HunYuanConfig
from posttrain.hunyuan.expert_lr import expert_lr_ratio
from posttrain.hunyuan.modeling import HunYuanForCausalLM
from posttrain.moe.recipe import MoEConfig, derive_expert_lr_ratio, prepare_moe_model
from posttrain.online.online_config import OnlineConfig
from posttrain.moe.param_groups import batch_tokens_per_step
from posttrain.trainers.sft_config import SFTRunConfig
from posttrain.trainers.sft_data import DataConfig
from posttrain.trainers.sft_trainer import build_trainer, train

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROUTER = "model.layers.{}.mlp.gate.wg.weight"
NO_DROPOUT = dict(attention_dropout=0.0, hidden_dropout=0.0)


def native_policy(tokenizer, seed=0, **overrides) -> HunYuanForCausalLM:
    """A tiny native Hunyuan-Large with smollm2-moe's training routing (capacity + recycle)."""
    config = HunYuanConfig(**{
        **dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, moe_intermediate_size=64,
               num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_experts=4,
               moe_topk=1, use_mixed_mlp_moe=True, num_shared_expert=1, use_qk_norm=True, use_cla=True,
               cla_share_factor=2, capacity_factor=1.0, moe_drop_tokens=True, moe_random_routing_dropped_token=True,
               tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        **overrides})
    torch.manual_seed(seed)
    return HunYuanForCausalLM(config)


def routers(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp.gate.wg." in n}


def train_logs(history) -> list[dict]:
    return [h for h in history if "loss" in h]


# --------------------------------------------------------------------------- expert learning rate


def test_expert_lr_ratio_is_derived_from_the_routing_unless_fixed(tokenizer):
    from posttrain.moe.noise_scale import NoiseScale

    model = native_policy(tokenizer)
    # B_noise measured on the run (in rows, against the rows per step) or given (in tokens)
    measured = NoiseScale(small_batch=2, big_batch=8, small_sq=3.0, big_sq=1.5)  # |G|² 1, tr(Σ) 4: B_simple 4 rows
    ratio, why = derive_expert_lr_ratio(MoEConfig(), model, batch_tokens=4096, batch_rows=8, measured=measured)
    assert measured.b_simple == pytest.approx(4.0) and ratio == pytest.approx(expert_lr_ratio(4, 1, 8, 4.0))
    assert "top-1 of 4" in why and "measured on this run" in why
    given, why = derive_expert_lr_ratio(MoEConfig(gradient_noise_scale_tokens=2048), model, batch_tokens=4096)
    assert given == pytest.approx(ratio) and "given" in why  # the same B / B_noise = 2
    assert derive_expert_lr_ratio(MoEConfig(expert_lr_ratio=0.31), model, 4096)[0] == 0.31
    # far below B_noise -> sqrt(k/n), at 4x B_noise > 1
    small = derive_expert_lr_ratio(MoEConfig(gradient_noise_scale_tokens=1e9), model, batch_tokens=1e3)[0]
    huge = derive_expert_lr_ratio(MoEConfig(gradient_noise_scale_tokens=1e3), model, batch_tokens=4e3 * 4)[0]
    assert small == pytest.approx(0.5, abs=1e-3) and huge > 1.0
    dense = native_policy(tokenizer, num_experts=1, use_mixed_mlp_moe=False)
    assert derive_expert_lr_ratio(MoEConfig(), dense, 4096)[0] == 1.0
    mixed = native_policy(tokenizer, moe_topk=[1, 2])
    with pytest.raises(ConfigError, match="moe_topk differs between layers.*set it in the config"):
        derive_expert_lr_ratio(MoEConfig(gradient_noise_scale_tokens=1e3), mixed, 4096)


def test_batch_tokens_come_from_the_trainer_arguments():
    from datasets import Dataset

    args = SimpleNamespace(per_device_train_batch_size=4, gradient_accumulation_steps=2, world_size=2, max_length=512)
    packed = Dataset.from_dict({"input_ids": [[1] * 500, [1] * 300]})
    assert batch_tokens_per_step(args, packed) == 4 * 2 * 2 * 400
    assert batch_tokens_per_step(args, None) == 4 * 2 * 2 * 512  # no tokenized rows: max_length
    pairs = Dataset.from_dict({"prompt_ids": [[1] * 10], "chosen_ids": [[1] * 20], "rejected_ids": [[1] * 40]})
    assert batch_tokens_per_step(args, pairs) == 4 * 2 * 2 * 2 * 40  # chosen and rejected: 10 + 30 each


# --------------------------------------------------------------------------- expert load


def test_expert_load_counts_training_forwards_only(tokenizer):
    model = native_policy(tokenizer)
    load = ExpertLoad(model)
    ids = torch.randint(0, 1000, (2, 24))
    model.eval()
    with torch.no_grad():
        model(ids)
    assert load.flush() == {}  # inference does not count
    model.train()
    model(ids).logits.sum().backward()
    logs = load.flush()
    assert set(logs) >= {"moe/expert_load_max_share", "moe/layer_0/max_share", "moe/layer_1/max_share",
                         "moe/router_demand_max_share", "moe/layer_1/demand_max_share",
                         "moe/dropped", "moe/recycled", "moe/dropped_share"}
    # capacity 1.0 with recycle: every one of the 48 choices per layer is processed, none above capacity
    assert logs["moe/dropped"] == 0 and logs["moe/expert_load_max_share"] <= 12 / 48
    assert load.flush() == {}  # a new window


def test_router_demand_is_logged_apart_from_the_load_capacity_lets_through(tokenizer):
    model = native_policy(tokenizer).train()
    with torch.no_grad():
        for name, param in routers(model).items():
            model.get_parameter(name).zero_()  # a flat router: every token's first choice is expert 0
    load = ExpertLoad(model)
    model(torch.randint(0, 1000, (2, 24)))
    logs = load.flush()
    assert logs["moe/router_demand_max_share"] == 1.0 and logs["moe/layer_0/demand_max_share"] == 1.0
    assert logs["moe/expert_load_max_share"] == 0.25  # capacity 12 of 48 per expert, the rest recycled
    assert logs["moe/recycled"] == 2 * 36 and logs["moe/dropped"] == 0


def test_expert_load_of_transformers_hunyuan_v1_moe(tokenizer):
    from posttrain.moe.tiny_moe import build_tiny_moe_model

    model = build_tiny_moe_model(tokenizer).train()
    load = ExpertLoad(model)
    model(torch.randint(0, 1000, (1, 16))).logits.sum().backward()
    logs = load.flush()
    assert 0.25 <= logs["moe/expert_load_max_share"] <= 1.0 and logs["moe/dropped"] == 0


# --------------------------------------------------------------------------- SFT


def save_chats(path, n=8) -> str:
    from datasets import Dataset

    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}. " * 3}]} for i in range(n)]
    Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def sft_config(tmp_path, **overrides) -> SFTRunConfig:
    values = dict(output_dir=str(tmp_path / "out"), dataset=save_chats(tmp_path / "chats"), max_steps=3,
                  learning_rate=1e-2, min_learning_rate=1e-3, per_device_train_batch_size=2, max_length=64,
                  logging_steps=1, eval_steps=0, save_steps=100, report_to="none", data=DataConfig(eval_fraction=0.0),
                  moe=MoEConfig(router_aux_loss_coef=0.01, attention_dropout=0.1, hidden_dropout=0.2))
    values.update(overrides)
    return SFTRunConfig(**values)


def test_sft_trains_the_router_logs_the_load_and_derives_the_expert_lr(tmp_path, tokenizer):
    model = native_policy(tokenizer)
    before = routers(model)
    cfg = sft_config(tmp_path)
    trainer, _ = train(cfg, model=model, tokenizer=tokenizer)

    assert all(not torch.equal(p, before[n]) for n, p in routers(model).items())
    logs = train_logs(trainer.state.log_history)
    assert len(logs) == 3
    for h in logs:
        assert math.isfinite(h["loss"]) and h["aux_loss"] > 0
        assert 0.25 <= h["moe/expert_load_max_share"] <= 1.0 and h["moe/dropped"] == 0
        assert 0.25 <= h["moe/router_demand_max_share"] <= 1.0
        assert {"moe/layer_0/max_share", "moe/layer_1/demand_max_share", "moe/recycled"} <= set(h)
    derived = expert_lr_ratio(4, 1, 2, trainer.noise_scale.b_simple)  # measured on the run, 2 rows per step
    for h in logs:
        assert h["lr/experts"] == pytest.approx(derived * h["lr/shared_expert"])
    assert cfg.moe.expert_lr_ratio == pytest.approx(derived)  # the card states the value used


def test_sft_loss_holds_the_aux_loss_exactly_once(tmp_path, tokenizer):
    model = native_policy(tokenizer)
    losses, aux = {}, None
    for coef in (0.5, 0.0):
        trainer, _ = build_trainer(sft_config(tmp_path, moe=MoEConfig(router_aux_loss_coef=coef, **NO_DROPOUT)),
                                   model=model, tokenizer=tokenizer)
        batch = next(iter(trainer.get_train_dataloader()))
        torch.manual_seed(1)  # the same recycle routing in both forwards
        losses[coef] = trainer.compute_loss(model, dict(batch)).item()
        if coef:
            aux = trainer._metrics["train"]["aux_loss"][-1]
    assert aux > 0.5
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * aux, rel=1e-3)


# --------------------------------------------------------------------------- DPO


class LengthScorer:
    name = "length"

    def score(self, prompts, responses, references=None):
        return [float(len(r)) for r in responses]


def dpo_config(tmp_path, **overrides) -> DPORunConfig:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "chosen": [{"role": "assistant", "content": str(2 * i)}],
        "rejected": [{"role": "assistant", "content": "No idea."}]}) + "\n" for i in range(6)))
    values = dict(output_dir=str(tmp_path / "out"), dataset=str(pairs), max_steps=2, learning_rate=1e-3,
                  per_device_train_batch_size=2, max_length=80, max_prompt_length=64, report_to="none",
                  loss_weights=[1.0, 1.0], moe=MoEConfig(router_aux_loss_coef=0.01),
                  online=OnlineConfig(steps_per_round=1, num_samples=3, prompts_per_round=2, max_new_tokens=6,
                                      margin=0.0, kl_samples=0),
                  ema=EMAConfig(enabled=False))
    values.update(overrides)
    return DPORunConfig(**values)


def test_dpo_with_online_rounds_trains_the_router_and_logs_the_load(tmp_path, tokenizer):
    from transformers import TrainerCallback

    class Logs(TrainerCallback):
        seen: list = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.seen.append(dict(logs))

    policy = native_policy(tokenizer)
    prepare_moe_model(policy, MoEConfig(router_aux_loss_coef=0.01))
    before = routers(policy)
    recorder = Logs()
    dpo_trainer.train(dpo_config(tmp_path), policy=policy, tokenizer=tokenizer, scorer=LengthScorer(),
                      callbacks=[recorder])
    assert all(not torch.equal(p, before[n]) for n, p in routers(policy).items())
    logs = train_logs(recorder.seen)
    assert len(logs) == 2
    assert all(math.isfinite(h["loss"]) and h["aux_loss"] > 0 and 0.25 <= h["moe/expert_load_max_share"] <= 1.0
               for h in logs)


def test_dpo_loss_holds_the_aux_loss_exactly_once(tmp_path, tokenizer):
    from datasets import Dataset

    policy = native_policy(tokenizer)
    prepare_moe_model(policy, MoEConfig(router_aux_loss_coef=0.5, **NO_DROPOUT))
    cfg = dpo_config(tmp_path, moe=MoEConfig(router_aux_loss_coef=0.5, **NO_DROPOUT))
    rows = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()[:2]]
    trainer = dpo_trainer.MoEDPOTrainer(model=policy, ref_model=round_state.make_reference(policy),
                                        args=dpo_trainer.build_dpo_args(cfg, moe_model=True),
                                        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                                        moe_config=cfg.moe)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    policy.train()
    torch.manual_seed(1)
    with_aux = trainer.compute_loss(policy, batch)
    aux = trainer._metrics["train"]["aux_loss"][-1]
    trainer.router_aux_loss_coef = 0.0
    trainer.aux_loss_enabled = False
    torch.manual_seed(1)
    without = trainer.compute_loss(policy, batch)
    assert aux > 0
    assert (with_aux - without).item() == pytest.approx(0.5 * aux, rel=1e-4)
