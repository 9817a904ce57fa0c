"""posttrain/moe/recipe.py, dropout.py, param_groups.py and models.py on a micro hunyuan_v1_moe (128-token vocabulary, 2 layers, 4 experts, top-1).

Model-level behaviour shared by SFT and DPO: aux loss in the loss and the gradients, dropout that
really applies, parameter groups, router freezing, loading errors.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from posttrain.moe.dropout import apply_dropout
from posttrain.model_loading import ModelLoadError, ModelSpec, load_policy
from posttrain.moe.recipe import MoEConfig, enable_router_aux_loss, prepare_moe_model
from posttrain.moe.param_groups import build_param_groups, group_learning_rates
from posttrain.moe.param_names import GROUP_NAMES, freeze_router, param_group_of
from posttrain.moe.tiny_moe import TINY_MOE_SHAPE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 128


def micro_moe(seed: int = 0, **moe_overrides):
    from transformers import AutoModelForCausalLM, HunYuanMoEV1Config

    torch.manual_seed(seed)
    config = HunYuanMoEV1Config(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                tie_word_embeddings=True, **TINY_MOE_SHAPE)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    prepare_moe_model(model, MoEConfig(**moe_overrides))
    return model


@pytest.fixture()
def batch():
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=generator)
    return {"input_ids": ids, "labels": ids.clone()}


def next_token_nll(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1))


def switch_balancing_loss(router_logits, num_experts):
    """Switch Transformer eq. 4-6 written out: E * sum_i f_i * P_i, averaged over layers' tokens."""
    probs = torch.cat([F.softmax(layer, dim=-1) for layer in router_logits])
    chosen = probs.argmax(dim=-1)
    fraction = torch.bincount(chosen, minlength=num_experts).float() / len(chosen)
    return num_experts * torch.sum(fraction * probs.mean(dim=0))


# --------------------------------------------------------------------------- router aux loss


def test_aux_loss_is_the_switch_loss_and_is_added_once(batch):
    model = micro_moe(router_aux_loss_coef=0.5)
    out = model(**batch)
    expected_aux = switch_balancing_loss(out.router_logits, num_experts=4)
    assert out.aux_loss.item() == pytest.approx(expected_aux.item(), rel=1e-5)
    expected_loss = next_token_nll(out.logits, batch["labels"]) + 0.5 * expected_aux
    assert out.loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)


def test_aux_loss_gives_the_top1_router_its_gradient(batch):
    """Top-1 routing renormalises the chosen weight to 1: the LM loss alone cannot train the router."""
    def router_grad(coef):
        model = micro_moe(router_aux_loss_coef=coef)
        model(**batch).loss.backward()
        return model.model.layers[0].mlp.gate.wg.weight.grad.abs().max().item()

    assert router_grad(0.0) < 1e-6
    assert router_grad(0.1) > 1e-4


def test_generation_with_a_kv_cache_works_while_the_aux_loss_is_on(batch):
    model = micro_moe(router_aux_loss_coef=0.01).eval()
    mask = torch.ones_like(batch["input_ids"])
    mask[1, :3] = 0  # a left-padded row, as batched sampling has
    out = model.generate(input_ids=batch["input_ids"], attention_mask=mask, max_new_tokens=4, do_sample=False,
                         pad_token_id=0)
    assert out.shape == (2, 16)


def test_aux_loss_off_returns_no_router_logits(batch):
    model = micro_moe(router_aux_loss_coef=0.0)
    out = model(**batch)
    assert out.aux_loss is None and not out.router_logits
    assert model.config.output_router_logits is False


def test_trl_fused_head_counts_the_aux_loss_once(batch):
    """TRL's SFT/DPO forward computes the aux loss itself; our hook must not add it a second time."""
    from trl.trainer.utils import add_fused_lm_head

    model = micro_moe(router_aux_loss_coef=0.5)
    plain = model(**batch)
    add_fused_lm_head(model)
    fused = model(**batch, fused_lm_head=True)
    assert fused.aux_loss.item() == pytest.approx(plain.aux_loss.item(), rel=1e-5)
    assert fused.loss.item() == pytest.approx(plain.loss.item(), rel=1e-4)


def test_enable_router_aux_loss_rejects_dense_models():
    from transformers import LlamaConfig, LlamaForCausalLM

    dense = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=1))
    with pytest.raises(ValueError, match="not a mixture-of-experts model"):
        enable_router_aux_loss(dense, 0.01)


# --------------------------------------------------------------------------- dropout


def test_dropout_rates_are_written_into_the_config(tmp_path):
    model = micro_moe(attention_dropout=0.1, hidden_dropout=0.2)
    assert all(layer.self_attn.attention_dropout == 0.1 for layer in model.model.layers)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attention_dropout"] == 0.1
    assert saved["hidden_dropout"] == 0.2


def test_hidden_dropout_zeroes_block_outputs_in_training_only(batch):
    model = micro_moe(hidden_dropout=0.2)
    seen = []
    mlp = model.model.layers[0].mlp
    mlp.register_forward_hook(lambda m, a, out: seen.append(out.detach()))  # runs after the dropout hook
    model.train()
    model(input_ids=batch["input_ids"])
    zero_share = (seen[-1] == 0).float().mean().item()
    assert 0.1 < zero_share < 0.3  # ~20% of 2x12x64 activations dropped (expected exact zeros: none)
    model.eval()
    model(input_ids=batch["input_ids"])
    assert (seen[-1] == 0).float().mean().item() == 0.0


def test_hidden_dropout_changes_training_outputs_but_not_eval(batch):
    model = micro_moe(hidden_dropout=0.2)
    reference = micro_moe(hidden_dropout=0.0)
    ids = batch["input_ids"]
    with torch.no_grad():
        model.eval(), reference.eval()
        assert torch.equal(model(input_ids=ids).logits, reference(input_ids=ids).logits)
        model.train()
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_reapplying_dropout_updates_the_rate_instead_of_stacking_hooks(batch):
    model = micro_moe(hidden_dropout=0.2)
    apply_dropout(model, attention_dropout=0.0, hidden_dropout=0.0)
    model.train()
    with torch.no_grad():
        first, second = model(input_ids=batch["input_ids"]).logits, model(input_ids=batch["input_ids"]).logits
    assert torch.equal(first, second)
    assert len(model._synthpost_hidden_dropout.handles) == 2 * TINY_MOE_SHAPE["num_hidden_layers"]
    assert model.config.hidden_dropout == 0.0


# --------------------------------------------------------------------------- parameter groups


def test_hunyuan_parameters_fall_into_the_expected_groups():
    model = micro_moe()
    groups = {name: param_group_of(name) for name, _ in model.named_parameters()}
    assert groups["model.layers.0.mlp.gate.wg.weight"] == "router"
    assert groups["model.layers.0.mlp.shared_mlp.gate_proj.weight"] == "shared_expert"
    assert groups["model.layers.1.mlp.experts.gate_up_proj"] == "experts"
    assert groups["model.layers.1.mlp.experts.down_proj"] == "experts"
    assert groups["model.layers.0.self_attn.q_proj.weight"] == "attention"
    assert groups["model.layers.0.self_attn.query_layernorm.weight"] == "norms"
    assert groups["model.layers.0.input_layernorm.weight"] == "norms"
    assert groups["model.norm.weight"] == "norms"
    assert groups["model.embed_tokens.weight"] == "embeddings"
    assert "other" not in groups.values()


@pytest.mark.parametrize("name, group", [
    ("model.layers.3.block_sparse_moe.gate.weight", "router"),  # Mixtral
    ("model.layers.3.block_sparse_moe.experts.5.w1.weight", "experts"),
    ("model.layers.3.mlp.shared_expert.up_proj.weight", "shared_expert"),  # Qwen2-MoE
    ("model.layers.3.mlp.shared_expert_gate.weight", "shared_expert"),
    ("model.layers.3.mlp.gate.weight", "router"),
    ("_fsdp_wrapped_module.model.layers.0.mlp.gate.wg.weight", "router"),  # FSDP1 name prefix
    ("lm_head.weight", "embeddings"),
    ("score.weight", "other"),
])
def test_other_moe_families_are_grouped_by_name(name, group):
    assert param_group_of(name) == group


def test_param_groups_have_the_configured_learning_rates():
    moe = MoEConfig(expert_lr_ratio=0.31, router_lr_ratio=0.5, embedding_lr_ratio=0.1, norm_lr_ratio=2.0)
    model = micro_moe()
    groups = {g["name"]: g for g in build_param_groups(model, 1e-4, 0.1, moe)}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx({
        "router": 5e-5, "shared_expert": 1e-4, "experts": 3.1e-5, "norms": 2e-4,
        "embeddings": 1e-5, "attention": 1e-4})
    assert groups["norms"]["weight_decay"] == 0.0 and groups["experts"]["weight_decay"] == 0.1
    grouped = [p for g in groups.values() for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))


def test_frozen_router_is_left_out_of_the_optimizer():
    model = micro_moe(freeze_router=True)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "mlp.gate." in n)
    names = [g["name"] for g in build_param_groups(model, 1e-4, 0.0, MoEConfig(expert_lr_ratio=0.5))]
    assert "router" not in names and set(names) <= set(GROUP_NAMES)


def test_freeze_router_on_a_model_without_router_is_an_error():
    with pytest.raises(ValueError, match="no router parameters"):
        freeze_router(torch.nn.Linear(2, 2))


def test_logged_group_lrs_follow_the_schedule_with_their_ratio():
    model = micro_moe()
    groups = build_param_groups(model, 1e-3, 0.0, MoEConfig(expert_lr_ratio=0.31))
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - 0.1 * step)
    scheduler.step()
    lrs = group_learning_rates(optimizer, logged_lr=9e-4)
    assert lrs["lr/experts"] == pytest.approx(9e-4 * 0.31)
    assert lrs["lr/shared_expert"] == pytest.approx(9e-4)


# --------------------------------------------------------------------------- loading


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown model 'no-such-model'"):
        load_policy(ModelSpec(name="no-such-model"))


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_policy(ModelSpec(name=str(tmp_path)))


def test_custom_code_is_not_run_without_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "totally_custom", "auto_map": {"AutoConfig": "evil.Config"}}))
    (tmp_path / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_policy(ModelSpec(name=str(tmp_path)))


def test_moe_config_rejects_bad_values():
    with pytest.raises(ValueError, match="hidden_dropout must be in"):
        MoEConfig(hidden_dropout=1.5)
    with pytest.raises(ValueError, match="expert_lr_ratio must be >= 0"):
        MoEConfig(expert_lr_ratio=-1)


def test_packed_sequences_do_not_attend_across_documents():
    """Padding-free packing relies on position_ids restarting at 0 per document (sdpa, CPU).

    transformers builds the block-diagonal mask only without a KV cache; TRL trains with
    use_cache=False, as here.
    """
    model = micro_moe().eval()
    first, second = torch.arange(3, 8).unsqueeze(0), torch.arange(20, 27).unsqueeze(0)
    packed_ids = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    with torch.no_grad():
        packed = model(input_ids=packed_ids, position_ids=positions, use_cache=False).logits
        alone = torch.cat([model(input_ids=first).logits, model(input_ids=second).logits], dim=1)
    assert torch.allclose(packed, alone, atol=1e-5)
