"""Expert load during training: how evenly each MoE layer's router spreads the tokens.

`ExpertLoad(model)` hooks every routed layer and counts, over the training forwards since the
last log line, the routed choices each expert processed, and the choices dropped or recycled by
capacity routing. `flush()` returns the figures and starts a new window:

    moe/expert_load_max_share     busiest expert's share of the choices its layer processed, worst
                                  layer (1/num_experts = perfectly even; 1.0 = one expert takes all)
    moe/expert_load_min_share     idlest expert's share, worst layer (0 = an expert got nothing)
    moe/router_demand_max_share   the same before capacity: the share of its layer's choices the
                                  router gave its favourite expert, worst layer. With capacity
                                  routing the processed load stays near 1/num_experts whatever
                                  the router wants; this is what the router has learnt.
    moe/layer_<i>/max_share       processed share of the busiest expert, per layer
    moe/layer_<i>/demand_max_share  the router's share for its favourite expert, per layer
    moe/dropped, moe/recycled     choices dropped / sent to another expert by capacity routing
    moe/dropped_share             dropped / all routed choices

Sources: our native Hunyuan module's `last_routing` (RoutingStats: load, demand, kept,
recycled, dropped) and, for transformers' `hunyuan_v1_moe` (dropless: demand = load), the
experts its gate selects. Only training
forwards count (eval, generation and the frozen DPO reference do not); under gradient
checkpointing a layer's recomputation counts again, which leaves the shares unchanged. Counts are
this process's (rank 0 logs its own share of a data-parallel batch).
"""
from __future__ import annotations

import re

import torch

_LAYER = re.compile(r"layers\.(\d+)\.")


class ExpertLoad:
    def __init__(self, model):
        self.load: dict[int, torch.Tensor] = {}
        self.demand: dict[int, torch.Tensor] = {}
        self.dropped = 0
        self.recycled = 0
        self.handles = [self._hook(name, module) for name, module in model.named_modules()
                        if self._source(module) is not None]

    def __bool__(self) -> bool:
        return bool(self.handles)

    @staticmethod
    def _source(module) -> str | None:
        if hasattr(module, "last_routing") and hasattr(module, "experts"):
            return "routing_stats"  # posttrain.hunyuan.modeling.HunYuanMoE
        if type(module).__name__ == "HunYuanMoEV1Gate":
            return "selected_experts"  # transformers' hunyuan_v1_moe: (logits, weights, experts)
        return None

    def _hook(self, name: str, module):
        match = _LAYER.search(name + ".")
        layer = int(match.group(1)) if match else len(self.load)
        source = self._source(module)

        def count(mod, args, output):
            if not (mod.training and torch.is_grad_enabled()):
                return
            if source == "routing_stats":
                stats = mod.last_routing
                self._add(self.load, layer, stats.load)
                self._add(self.demand, layer, stats.demand)
                self.dropped += int(stats.dropped)
                self.recycled += int(stats.recycled)
            else:
                load = torch.bincount(output[2].reshape(-1), minlength=mod.num_experts)
                self._add(self.load, layer, load)
                self._add(self.demand, layer, load)

        return module.register_forward_hook(count)

    @staticmethod
    def _add(counts: dict[int, torch.Tensor], layer: int, load: torch.Tensor) -> None:
        load = load.detach().to("cpu", torch.long)
        counts[layer] = counts[layer] + load if layer in counts else load.clone()

    def flush(self) -> dict[str, float]:
        """The figures since the last flush (empty when no training forward ran), then reset."""
        if not self.load:
            return {}
        logs: dict[str, float] = {}
        max_shares, min_shares, routed = [], [], 0
        for layer in sorted(self.load):
            load = self.load[layer].double()
            total = load.sum().item()
            routed += total
            if total:
                max_shares.append((load.max() / total).item())
                min_shares.append((load.min() / total).item())
                logs[f"moe/layer_{layer}/max_share"] = round(max_shares[-1], 4)
        demand_shares = []
        for layer in sorted(self.demand):
            demand = self.demand[layer].double()
            if demand.sum():
                demand_shares.append((demand.max() / demand.sum()).item())
                logs[f"moe/layer_{layer}/demand_max_share"] = round(demand_shares[-1], 4)
        if max_shares:
            logs["moe/expert_load_max_share"] = round(max(max_shares), 4)
            logs["moe/expert_load_min_share"] = round(min(min_shares), 4)
        if demand_shares:
            logs["moe/router_demand_max_share"] = round(max(demand_shares), 4)
        logs["moe/dropped"] = self.dropped
        logs["moe/recycled"] = self.recycled
        all_choices = routed + self.dropped
        logs["moe/dropped_share"] = round(self.dropped / all_choices, 4) if all_choices else 0.0
        self.load, self.demand, self.dropped, self.recycled = {}, {}, 0, 0
        return logs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
