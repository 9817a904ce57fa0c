"""Attention and hidden dropout for post-training (the report's SFT: 0.1 and 0.2).

`HunYuanMoEV1Config` has `attention_dropout` (applied to the attention probabilities) but no
hidden dropout at all. We write `hidden_dropout` into the config (so it is saved with the model)
and apply it Megatron-style with forward hooks: dropout on the output of every attention block
and every MoE block, before the residual add. Only in training mode; eval and generation are
untouched. Architectures whose config declares a native hidden-dropout field (our native
Hunyuan-Large module among them) get the value written there instead, never both.
"""
from __future__ import annotations

# Config fields through which some architectures already apply hidden (residual) dropout.
_NATIVE_HIDDEN_DROPOUT_FIELDS = ("hidden_dropout", "hidden_dropout_prob", "resid_pdrop", "residual_dropout")


def write_dropout_to_config(config, attention_dropout: float, hidden_dropout: float) -> None:
    """Record both rates in the config so they are saved with the model (config.json)."""
    text_config = config.get_text_config()
    text_config.attention_dropout = attention_dropout
    native = native_hidden_dropout_field(text_config)
    setattr(text_config, native or "hidden_dropout", hidden_dropout)


def native_hidden_dropout_field(config) -> str | None:
    """The config field through which the architecture itself applies hidden dropout, if any."""
    declared = set(getattr(type(config), "__dataclass_fields__", {}))
    return next((f for f in _NATIVE_HIDDEN_DROPOUT_FIELDS if f in declared), None)


class _HiddenDropout:
    """The rate shared by all hooks of one model, so re-applying changes it instead of stacking hooks."""

    def __init__(self, p: float):
        self.p = p
        self.handles: list = []

    def on_block_output(self, module, args, output):
        import torch.nn.functional as F

        if not module.training or self.p == 0.0:
            return output
        if isinstance(output, tuple):  # attention blocks return (hidden, attn_weights)
            return (F.dropout(output[0], self.p, training=True), *output[1:])
        return F.dropout(output, self.p, training=True)


def decoder_layers(model) -> list:
    """Modules that hold an attention block and an MLP/MoE block (Llama-family decoder layers)."""
    return [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


def apply_dropout(model, attention_dropout: float, hidden_dropout: float) -> None:
    """Set attention dropout on every attention module and install hidden dropout hooks."""
    write_dropout_to_config(model.config, attention_dropout, hidden_dropout)
    for module in model.modules():
        # attention modules copy the rate from the config at construction time
        if isinstance(getattr(module, "attention_dropout", None), (int, float)):
            module.attention_dropout = attention_dropout
    if native_hidden_dropout_field(model.config.get_text_config()):
        return  # the architecture reads the config field itself (only takes effect at construction)
    state: _HiddenDropout | None = getattr(model, "_synthpost_hidden_dropout", None)
    if state is not None:
        state.p = hidden_dropout
        return
    if hidden_dropout == 0.0:
        return
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers with self_attn and mlp found; "
                         "cannot apply hidden dropout (set moe.hidden_dropout: 0)")
    state = _HiddenDropout(hidden_dropout)
    for layer in layers:
        state.handles.append(layer.self_attn.register_forward_hook(state.on_block_output))
        state.handles.append(layer.mlp.register_forward_hook(state.on_block_output))
    model._synthpost_hidden_dropout = state


