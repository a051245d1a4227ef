"""What one run measures, and in which order: the cases sized to the free memory, the dtype
configurations, and the groups (one optimizer's implementations in one case and configuration)
ordered so that a run cut short by --time-limit or Ctrl-C has answered the first question
first: AdamW against torch.optim in every case, then the other optimizers, then the other
dtype configurations."""
import argparse
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from fused_optim.backends import serves
from fused_optim.dtypes import math_dtype

from . import impls
from .cases import Case
from .names import RATIO_PEER


@dataclass(frozen=True)
class Group:
    case: Case
    config: Dict  # {"param_dtype": name, "state_dtype": name}
    optimizer: impls.OptimizerCase
    backends: Sequence[str]
    peers: Sequence[str]

    def key(self) -> Dict:
        return {"case": self.case.name, **self.config, "optimizer": self.optimizer.name}

    def label(self) -> str:
        return f"{self.case.name} {self.config['param_dtype']}/{self.config['state_dtype']} {self.optimizer.name}"


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        return 8 << 30


def max_case_numel(device: torch.device, args: argparse.Namespace, yard_numel: int) -> int:
    """The most elements a case may have so that the largest group fits in 85% of the free
    memory: the initial values and grads, each implementation's params and up to 3 fp32 states
    (our backends that serve the device, and at most 3 peers: AdamW's group has fused, foreach
    and compiled, the others compiled, authors and pytorch_optimizer), about 6 fp32 temporaries
    of the per-tensor loops, and the yardstick's two fp32 tensors."""
    pb = max(impls.DTYPES[d].itemsize for d in args.dtype)
    n_impls = sum(serves(b, device)[0] and (b in ("cpu", "torch")) == (device.type == "cpu" or b == "torch")
                  for b in args.backends) + min(3, len(args.peers))
    n_impls += len(args.precision)  # (a master or remainder per element besides: within the 12 B)
    if args.clip is not None:  # each row again with clipping, the peers on their own grads
        n_impls *= 2
        pb_grads = pb * min(2, len(args.peers))
    else:
        pb_grads = 0
    per_element = 2 * pb + n_impls * (pb + 12) + 24 + pb_grads
    return max(1 << 16, int((0.85 * _free_bytes(device) - 8 * yard_numel) // per_element))


def dtype_configs(args: argparse.Namespace, notes: List[str]) -> List[Dict]:
    """(param dtype, state dtype) pairs: each param dtype with its default states (fp32 for
    bf16/fp16 params), and with bf16 states where the classes have the state_dtype option."""
    supported = [o.name for o in impls.OPTIMIZERS if impls.supports_state_dtype(o)]
    configs = []
    for name in args.dtype:
        pdt = impls.DTYPES[name]
        for sname in args.state_dtype:
            sdt = impls.DTYPES[sname]
            if sdt == math_dtype(pdt) or (sname == "bf16" and supported):
                configs.append({"param_dtype": name, "state_dtype": sname})
    if "bf16" in args.state_dtype and not supported:
        notes.append("bf16 states: not measured, no optimizer class has a state_dtype option in this "
                     "fused_optim (rows appear once it exists)")
    elif "bf16" in args.state_dtype and len(supported) < len(impls.OPTIMIZERS):
        notes.append(f"bf16 states: measured for {', '.join(supported)} only (the classes with state_dtype)")
    return configs


def groups(args: argparse.Namespace, case: Case, config: Dict) -> List[Group]:
    """The groups of one case and configuration. The AdamW peers are measured even when AdamW
    is not selected, since every other optimizer's speed-up over torch.optim refers to them."""
    names = list(args.optimizers)
    torch_peers = [p for p in args.peers if p in impls.TORCH_PEERS]
    if RATIO_PEER not in names and torch_peers:
        names.insert(0, RATIO_PEER)
    default_state = impls.DTYPES[config["state_dtype"]] == math_dtype(impls.DTYPES[config["param_dtype"]])
    out = []
    for name in names:
        opt = impls.BY_NAME[name]
        if not default_state and not impls.supports_state_dtype(opt):
            continue
        if name in args.optimizers:
            out.append(Group(case, config, opt, tuple(args.backends), tuple(args.peers)))
        else:
            out.append(Group(case, config, opt, (), tuple(torch_peers)))
    return out


def ordered(args: argparse.Namespace, cases: List[Case], configs: List[Dict]) -> List[Group]:
    """Every group, by priority: per configuration (in --dtype, --state-dtype order), first the
    AdamW group of every case (the question most users ask, and the peer every other
    optimizer's ratio to torch.optim refers to), then each case's other groups together (they
    share the case's tensors)."""
    out: List[Group] = []
    for config in configs:
        per_case = [groups(args, case, config) for case in cases]
        out += [g for gs in per_case for g in gs if g.optimizer.name == RATIO_PEER]
        out += [g for gs in per_case for g in gs if g.optimizer.name != RATIO_PEER]
    return out
