"""Post-training (SFT, reward models, DPO) on MoE models.

Importing this package registers nothing and loads no torch: a program that names posttrain's
model aliases (tiny-hunyuan-moe, smollm2-moe) calls `posttrain.model_registry.register_models()`
once at startup; code that loads a Hunyuan checkpoint calls `posttrain.hunyuan.register()`."""
