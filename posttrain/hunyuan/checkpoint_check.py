"""Check a Hunyuan checkpoint directory against its config before loading it (`python -m
pipelines.models check`): the tensors a model built from the config needs, by name and shape."""
from __future__ import annotations

import torch

from .configuration import HunYuanConfig
from .loading import check_loading_info, safetensors_shapes
from .modeling import HunYuanForCausalLM


def check_checkpoint(path) -> HunYuanConfig:
    """Check a Hunyuan checkpoint directory without loading its weights: the config builds
    (HunyuanConfigError naming the key otherwise) and the safetensors hold exactly the tensors,
    with the shapes, that the config's model needs (CheckpointError naming the first that does not).
    Reads only the config and the safetensors headers; returns the config."""
    config = HunYuanConfig.from_pretrained(path)
    with torch.device("meta"):
        model = HunYuanForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    found = safetensors_shapes(path)
    if config.tie_word_embeddings:
        found.pop("lm_head.weight", None)  # a tied head may be written out; it is the embedding
    mismatched = [(k, found[k], v) for k, v in expected.items() if k in found and found[k] != v]
    check_loading_info({"missing_keys": [k for k in expected if k not in found],
                        "unexpected_keys": [k for k in found if k not in expected],
                        "mismatched_keys": mismatched}, model)
    return config
