"""Loading a checkpoint all or nothing: transformers only warns about missing tensors and fills
them with random values; for a MoE that silently means random experts or routers.
"""
from __future__ import annotations

from .configuration import HunyuanError


class CheckpointError(HunyuanError):
    """The checkpoint's tensors do not match the model its config describes."""


# Tensors a checkpoint may carry that the model recomputes (old RoPE caches).
_RECOMPUTED = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


def check_loading_info(info: dict, model, allow_mismatch: bool = False) -> None:
    """Raise CheckpointError for the first missing, mis-shaped or unexpected tensor (a mis-shaped
    one is re-initialised and listed as missing too: the shape is the better message)."""
    mismatched = list(info.get("mismatched_keys") or [])
    if mismatched and not allow_mismatch:
        key, found, expected = _mismatch(mismatched[0])
        raise CheckpointError(f"tensor {key} has shape {found} in the checkpoint, the config needs {expected}"
                              f"{_hint(key, model)}")
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint lacks tensor {missing[0]}{more}: the model would run with random "
                              f"values there{_hint(missing[0], model)}")
    unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith(_RECOMPUTED))
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"checkpoint has tensor {unexpected[0]}{more} that the config does not use"
                              f"{_hint(unexpected[0], model)}")


def _hint(key: str, model) -> str:
    if ".k_proj." in key or ".v_proj." in key:
        config = model.config
        return f" (check use_cla={config.use_cla}, cla_share_factor={config.cla_share_factor})"
    if ".experts." in key or ".gate.wg." in key or ".shared_mlp." in key:
        config = model.config
        return (f" (check num_experts={config.num_experts}, use_mixed_mlp_moe={config.use_mixed_mlp_moe}, "
                f"num_shared_expert={config.num_shared_expert})")
    return ""


def _mismatch(entry) -> tuple[str, tuple, tuple]:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        key, found, expected = entry
        return key, tuple(found), tuple(expected)
    return str(entry), (), ()


def safetensors_shapes(path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the headers of a directory's *.safetensors files."""
    from posttrain.checkpoints import tensor_shapes

    shapes = tensor_shapes(str(path))
    if not shapes:
        raise CheckpointError(f"{path} has no *.safetensors weights")
    return shapes
