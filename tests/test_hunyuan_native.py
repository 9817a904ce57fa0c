"""The native Hunyuan-Large module (posttrain/hunyuan): Tencent's checkpoint format, CLA, MoE
routing, the aux loss, dropout, gradient checkpointing and the errors for bad input."""
from __future__ import annotations

import json

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from posttrain.hunyuan.configuration import HunYuanConfig, HunyuanConfigError
from posttrain.hunyuan.loading import CheckpointError
from posttrain.hunyuan.modeling import HunYuanForCausalLM
from posttrain.hunyuan.routing import expert_capacity, route

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, num_experts=4, moe_topk=1, use_mixed_mlp_moe=True,
            num_shared_expert=1, use_qk_norm=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, **overrides) -> HunYuanForCausalLM:
    torch.manual_seed(seed)
    model = HunYuanForCausalLM(HunYuanConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # norms away from 1 so that per-layer QK-norm weights matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def kv_cache_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None)


# --------------------------------------------------------------------------- Tencent's format


def tencent_tensors(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Hunyuan-Large checkpoint, spelled out from Tencent's code."""
    h, inter, head = cfg["hidden_size"], cfg["intermediate_size"], cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head
    names = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,),
             "lm_head.weight": (cfg["vocab_size"], h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                  p + "self_attn.q_proj.weight": (h, h), p + "self_attn.o_proj.weight": (h, h),
                  p + "self_attn.query_layernorm.weight": (head,), p + "self_attn.key_layernorm.weight": (head,),
                  p + "mlp.gate.wg.weight": (cfg["num_experts"], h)}
        if i % cfg["cla_share_factor"] == 0:
            names |= {p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h)}
        for mlp in ["mlp.shared_mlp."] + [f"mlp.experts.{e}." for e in range(cfg["num_experts"])]:
            names |= {p + mlp + "gate_proj.weight": (inter, h), p + mlp + "up_proj.weight": (inter, h),
                      p + mlp + "down_proj.weight": (h, inter)}
    return names


TENCENT_CONFIG = {  # the keys of Tencent's released config.json, tiny values
    "architectures": ["HunYuanForCausalLM"], "model_type": "hunyuan",
    "auto_map": {"AutoConfig": "configuration_hunyuan.HunYuanConfig",
                 "AutoModelForCausalLM": "modeling_hunyuan.HunYuanForCausalLM"},
    "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
    "eod_token_id": 3, "sep_token_id": 4, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02,
    "intermediate_size": 48, "max_position_embeddings": 256, "num_attention_heads": 2, "num_hidden_layers": 4,
    "num_key_value_heads": 1, "pretraining_tp": 1, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "rope_theta": 10000.0, "rope_scaling": {"alpha": 1000.0, "beta_fast": 32, "beta_slow": 1, "factor": 1.0,
                                            "mscale": 1.0, "mscale_all_dim": 1.0, "type": "dynamic"},
    "use_cla": True, "cla_share_factor": 2, "use_qk_norm": True, "num_experts": 4, "moe_topk": 1,
    "use_mixed_mlp_moe": True, "num_shared_expert": 1, "capacity_factor": 1.0, "moe_drop_tokens": False,
    "moe_random_routing_dropped_token": False, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 96,
}


def write_tencent_checkpoint(path, drop: str | None = None, reshape: str | None = None):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tensors = {name: torch.randn(shape) * 0.05 for name, shape in tencent_tensors(TENCENT_CONFIG).items()}
    if drop:
        del tensors[drop]
    if reshape:
        tensors[reshape] = torch.randn(tensors[reshape].shape[0] + 1, *tensors[reshape].shape[1:])
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(TENCENT_CONFIG))
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, path / "model.safetensors", metadata={"format": "pt"})
    return tensors


def test_tencent_checkpoint_loads_without_remote_code(tmp_path):
    from transformers import AutoModelForCausalLM

    tensors = write_tencent_checkpoint(tmp_path / "ckpt")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    assert type(model).__name__ == "HunYuanForCausalLM"
    state = model.state_dict()
    assert set(state) == set(tensors)  # every tensor has a home, every parameter a tensor
    for name, value in tensors.items():
        assert torch.equal(state[name], value.to(torch.bfloat16).float()), name
    assert model.config.eod_token_id == 3 and model.config.rope_parameters["alpha"] == 1000.0
    out = model.generate(torch.tensor([[1, 5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 8)


def test_missing_or_misshaped_expert_tensor_is_an_error(tmp_path):
    from transformers import AutoModelForCausalLM

    write_tencent_checkpoint(tmp_path / "a", drop="model.layers.2.mlp.experts.3.down_proj.weight")
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.mlp\.experts\.3\.down_proj\.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    write_tencent_checkpoint(tmp_path / "b", reshape="model.layers.1.mlp.gate.wg.weight")
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.mlp\.gate\.wg\.weight has shape \(5, 64\)"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text(json.dumps({**TENCENT_CONFIG, "use_cla": False}))
    write_tencent_checkpoint(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text(json.dumps({**TENCENT_CONFIG, "use_cla": False}))
    with pytest.raises(CheckpointError, match=r"lacks tensor model\.layers\.1\.self_attn\.k_proj.*use_cla=False"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "b")


@pytest.mark.parametrize("bad, key", [
    (dict(moe_topk=5), "moe_topk=5"),
    (dict(use_cla=True, cla_share_factor=3), "cla_share_factor=3"),
    (dict(rope_scaling={"type": "yarn", "factor": 2.0}), "rope_scaling type 'yarn'"),
    (dict(num_key_value_heads=3, num_attention_heads=4), "num_key_value_heads=3"),
    (dict(moe_topk=[1, 1]), "moe_topk has 2 entries"),
])
def test_bad_config_names_the_key(bad, key):
    with pytest.raises(HunyuanConfigError, match=key.replace("(", r"\(")):
        HunYuanConfig(**{**TINY, **bad})


def test_bad_checkpoint_config_is_one_clear_error(tmp_path):
    from transformers import AutoConfig

    bad = {**TENCENT_CONFIG, "rope_scaling": {"type": "longrope", "factor": 2.0}}
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(HunyuanConfigError, match="rope_scaling type 'longrope' is not supported"):
        AutoConfig.from_pretrained(tmp_path)


# --------------------------------------------------------------------------- attention and CLA


def test_cla_has_fewer_kv_weights_halves_the_cache_and_caches_exactly():
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = torch.randint(3, 96, (2, 10))
    results = {}
    for cla in (False, True):
        config = AutoConfig.for_model("hunyuan", **{**TINY, "use_cla": cla, "cla_share_factor": 2})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        kv_params = sum(p.numel() for n, p in model.named_parameters() if ".k_proj." in n or ".v_proj." in n)
        with torch.no_grad():
            full = model(ids).logits
            out = model(ids[:, :6], use_cache=True)
            steps = [out.logits] + [model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True).logits
                                    for t in range(6, 10)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        generated = model.generate(ids[:, :4], max_new_tokens=5, do_sample=False)
        with torch.no_grad():  # greedy with the cache == argmax of uncached forwards
            assert torch.equal(model(generated).logits[:, 3:-1].argmax(-1), generated[:, 4:])
        results[cla] = kv_params, kv_cache_bytes(out.past_key_values)
    assert results[True][0] * 2 == results[False][0]
    assert results[True][1] * 2 == results[False][1]


def test_cross_layer_uses_its_group_keys_with_its_own_key_norm():
    model = tiny_model(use_cla=True, cla_share_factor=2)
    ids = torch.randint(3, 96, (1, 8))
    with torch.no_grad():
        base = model(ids).logits
        model.model.layers[1].self_attn.key_layernorm.weight.mul_(1.5)  # the cross layer's own norm
        changed = model(ids).logits
    assert not torch.allclose(base, changed)
    assert not hasattr(model.model.layers[1].self_attn, "k_proj")


def test_cross_layer_reading_keys_normed_by_its_group_computes_the_same():
    """What a shared serving cache holds (keys normed by the group's first layer) gives the same
    logits once the cross layer moves its key-norm weight onto the query (read_keys_from)."""
    model = tiny_model(use_cla=True, cla_share_factor=2)
    ids = torch.randint(3, 96, (2, 9))
    with torch.no_grad():
        expected = model(ids).logits
        for cross in (1, 3):
            model.model.layers[cross].self_attn.read_keys_from(model.model.layers[cross - 1].self_attn)
        shared = model(ids).logits
    torch.testing.assert_close(shared, expected, atol=1e-5, rtol=1e-5)
    assert "_key_source" not in dict(model.named_modules())  # a reference, not a submodule
    with pytest.raises(ValueError, match="does not read layer 2"):
        model.model.layers[1].self_attn.read_keys_from(model.model.layers[2].self_attn)


def test_sdpa_equals_eager_and_padding_is_masked():
    model = tiny_model()
    ids = torch.randint(3, 96, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        sdpa = model(ids).logits
        model.config._attn_implementation = "eager"
        eager = model(ids).logits
        # positions from the mask, as generate() does: QK-norm after RoPE makes absolute positions matter
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        left = model(padded, attention_mask=mask, position_ids=positions).logits[:, 3:]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, eager, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- MoE


def test_top1_weighs_by_raw_probability_and_topk_renormalises():
    logits = torch.randn(32, 4)
    probs = logits.softmax(-1)
    one = route(logits, 1)
    torch.testing.assert_close(one.weights[:, 0], probs.max(-1).values)
    two = route(logits, 2)
    top2 = probs.topk(2).values
    torch.testing.assert_close(two.weights, top2 / top2.sum(-1, keepdim=True))


@pytest.mark.parametrize("recycle", [False, True])
def test_capacity_accounts_for_every_token(recycle):
    torch.manual_seed(1)
    logits = torch.randn(64, 4)
    logits[:, 0] += 3  # most tokens want expert 0
    for top_k in (1, 2):
        capacity = expert_capacity(64, top_k, 4, 1.0)
        routing = route(logits, top_k, capacity=capacity, recycle=recycle)
        stats = routing.stats
        assert stats.kept + stats.recycled + stats.dropped == 64 * top_k
        assert int(stats.load.sum()) == stats.kept + stats.recycled
        assert int(stats.load.max()) <= capacity
        dropped = routing.experts == 4
        assert int(dropped.sum()) == stats.dropped and torch.all(routing.weights[dropped] == 0)
        if recycle:  # capacity_factor 1 leaves room for everyone
            assert stats.dropped == 0 and stats.recycled > 0
        else:
            assert stats.dropped > 0 and stats.recycled == 0
    assert route(logits, 1).stats.dropped == 0  # no capacity: dropless


def test_capacity_applies_in_training_only():
    model = tiny_model(moe_drop_tokens=True, capacity_factor=0.5)
    ids = torch.randint(3, 96, (2, 16))
    moe = model.model.layers[0].mlp
    model.train()
    model(ids)
    assert moe.last_routing.dropped > 0
    model.eval()
    model(ids)
    assert moe.last_routing.dropped == 0


def test_grouped_dispatch_equals_a_loop_over_experts():
    model = tiny_model(moe_topk=2)
    moe = model.model.layers[0].mlp
    x = torch.randn(20, 64)
    routing = route(moe.gate(x), 2, capacity=4)  # some choices dropped
    with torch.no_grad():
        grouped = moe.experts(x, routing.experts, routing.weights)
        looped = torch.zeros_like(x)
        for t in range(20):
            for e, w in zip(routing.experts[t].tolist(), routing.weights[t]):
                if e < 4:
                    looped[t] += w * moe.experts[e](x[t:t + 1])[0]
    torch.testing.assert_close(grouped, looped, atol=1e-6, rtol=1e-5)


def test_aux_loss_is_returned_and_in_the_loss_once():
    model = tiny_model(router_aux_loss_coef=0.1)
    ids = torch.randint(3, 96, (2, 9))
    plain = model(ids, labels=ids)
    assert plain.aux_loss is None
    out = model(ids, labels=ids, output_router_logits=True)
    assert out.aux_loss is not None and out.aux_loss.item() >= 1.0 - 1e-4  # 1 = perfectly balanced
    torch.testing.assert_close(out.loss, plain.loss + 0.1 * out.aux_loss)
    out.loss.backward()
    assert model.model.layers[0].mlp.gate.wg.weight.grad.abs().sum() > 0


def test_trl_fused_head_and_our_forward_agree_on_the_loss():
    """TRL's SFT/DPO score through a fused LM head on the backbone and add the aux loss themselves;
    our forward adds it for everyone else. Same loss either way, the aux loss in it once."""
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_model(output_router_logits=True, router_aux_loss_coef=0.1)
    ids = torch.randint(3, 96, (2, 9))
    own = model(ids, labels=ids)
    add_fused_lm_head(model)
    fused = model(ids, labels=ids, fused_lm_head=True)
    torch.testing.assert_close(fused.aux_loss, own.aux_loss)
    torch.testing.assert_close(fused.loss, own.loss)


def test_lead_moe_helpers_see_the_native_fields():
    from posttrain.moe.dropout import native_hidden_dropout_field
    from posttrain.moe.param_names import param_group_of

    assert native_hidden_dropout_field(HunYuanConfig(**TINY)) == "hidden_dropout"
    groups = {name: param_group_of(name) for name, _ in tiny_model().named_parameters()}
    assert groups["model.layers.0.mlp.gate.wg.weight"] == "router"
    assert groups["model.layers.0.mlp.shared_mlp.up_proj.weight"] == "shared_expert"
    assert groups["model.layers.0.mlp.experts.3.down_proj.weight"] == "experts"
    assert groups["model.layers.0.self_attn.k_proj.weight"] == "attention"


# --------------------------------------------------------------------------- training features


def test_hidden_and_attention_dropout_only_in_training():
    model = tiny_model(hidden_dropout=0.3, attention_dropout=0.2)
    ids = torch.randint(3, 96, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)
        model.config.hidden_dropout = 0.0  # read at call time
        for m in model.modules():
            if hasattr(m, "attention_dropout"):
                m.attention_dropout = 0.0
        assert torch.equal(model(ids).logits, model(ids).logits)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_keeps_cla_gradients(reentrant):
    ids = torch.randint(3, 96, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(use_cla=True, cla_share_factor=2).train()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": reentrant})
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.k_proj.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_sequence_classification_head():
    from transformers import AutoModelForSequenceClassification

    config = HunYuanConfig(**TINY, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    scores = model(ids, attention_mask=(ids != 0).long()).logits
    assert scores.shape == (2, 1)
