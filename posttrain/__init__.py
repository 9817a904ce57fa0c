"""Post-training (SFT, reward models, DPO) on MoE models; registers its model aliases with datagen."""
from pathlib import Path

from datagen.inference.models import EMBEDDED_ALIAS, prepare, register_alias

TINY_MOE_ALIAS = "tiny-hunyuan-moe"


def _build_tiny_moe(dest: Path) -> None:
    from posttrain.tiny_moe import build_tiny_moe

    build_tiny_moe(dest, tokenizer_dir=prepare(EMBEDDED_ALIAS))


register_alias(TINY_MOE_ALIAS, _build_tiny_moe)
