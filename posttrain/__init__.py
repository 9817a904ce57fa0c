"""Post-training (SFT, reward models, DPO) on MoE models; registers its model aliases with datagen."""
from pathlib import Path

from datagen.inference.models import EMBEDDED_ALIAS, prepare, register_alias

TINY_MOE_ALIAS = "tiny-hunyuan-moe"


def _build_tiny_moe(dest: Path) -> None:
    from posttrain.tiny_moe import build_tiny_moe

    build_tiny_moe(dest, tokenizer_dir=prepare(EMBEDDED_ALIAS))


register_alias(TINY_MOE_ALIAS, _build_tiny_moe)


SMOLLM2_MOE_ALIAS = "smollm2-moe"


def _build_smollm2_moe(dest: Path) -> None:
    from posttrain.hunyuan.upcycle import upcycle_directory

    upcycle_directory(prepare(EMBEDDED_ALIAS), dest)  # SmolLM2-135M-Instruct as an exact 4-expert MoE


register_alias(SMOLLM2_MOE_ALIAS, _build_smollm2_moe)

# The native Hunyuan-Large model (model_type "hunyuan") with transformers' Auto classes, so its
# checkpoints load with AutoModelForCausalLM.from_pretrained(dir) and no trust_remote_code.
# This imports torch and transformers (a few seconds on a cold start).
from posttrain.hunyuan import register as _register_hunyuan  # noqa: E402

_register_hunyuan()
