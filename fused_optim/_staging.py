"""Address lists for the kernels (cpu, cuda and triton backends), which walk raw memory.

Every tensor of one element index (param, grad, states) must share one dense layout; an
index where they do not (a strided view, say) goes through contiguous copies, and the roles a
call writes are copied back by finish(). A dense view that is merely misaligned needs no
copy: the kernels take their unaligned path for it.
"""
from typing import Sequence

import torch


def _is_dense(t: torch.Tensor) -> bool:
    """Non-overlapping and dense: its elements fill numel() consecutive slots in some order."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def shares_one_dense_layout(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether a kernel can walk these tensors (one element index: param, grad, states) by
    raw address without copies: all contiguous, or one dense layout with the same strides."""
    if all(t.is_contiguous() for t in tensors):
        return True
    first = tensors[0]
    return _is_dense(first) and all(t.stride() == first.stride() for t in tensors)


class Staged:
    """Address lists for one native call. roles[k][i] is role k (param, grad, ...) of element
    index i; `writable` marks the roles the call writes, copied back by finish()."""

    def __init__(self, roles: Sequence[Sequence[torch.Tensor]], writable: Sequence[bool]):
        self.numels = [t.numel() for t in roles[0]]
        columns = [list(r) for r in roles]
        self._write_back = []
        # fast path: all contiguous (one cheap call per tensor); the general test only for the rest
        contiguous = [all(flags) for flags in zip(*([t.is_contiguous() for t in c] for c in columns))]
        for i, ok in enumerate(contiguous):
            if ok or shares_one_dense_layout([c[i] for c in columns]):
                continue
            for k, column in enumerate(columns):
                original = column[i]
                column[i] = original.contiguous()
                if writable[k]:
                    self._write_back.append((original, column[i]))
        self.addresses = [[t.data_ptr() for t in c] for c in columns]
        # the staged copies must outlive the native call that reads them by address (the
        # read-only ones have no other reference)
        self.columns = columns

    def finish(self) -> None:
        for original, staged in self._write_back:
            original.copy_(staged)


_ADDRESS = torch._C.TensorBase.data_ptr
_NUMEL = torch._C.TensorBase.numel


class Prepared:
    """The address lists of one operation's calls that a step plan (optimizers/_step_plan.py)
    took once and checks at every step: every declared per-param list but the steps, in the
    declaration's order (an empty list where the call leaves one out), then the masters or
    remainders of the param storage; the numels; the per-param step counters' addresses; and
    the tensors the call writes (their version counters are bumped after it). The grads are
    new tensors at most steps: for_grads() puts this step's in."""

    def __init__(self, declaration, lists, extras=None):
        named = dict(zip(declaration.lists, lists))
        roles = [n for n in declaration.lists if n != "steps"]
        self.roles = roles
        self.grads_role = roles.index("grads")
        self.addresses = [list(map(_ADDRESS, named[n])) for n in roles]
        if extras is not None:
            self.addresses.append(list(map(_ADDRESS, extras)))
        self.numels = list(map(_NUMEL, named["params"]))
        self.steps = list(named["steps"]) if "steps" in named else None
        self.step_addresses = list(map(_ADDRESS, self.steps)) if self.steps is not None else None
        self.mutated = [t for n in declaration.mutated if n in named for t in named[n]]
        # what a backend keeps for these lists between steps (the cpu backend: its native Call),
        # shared by the per-step copies for_grads makes
        self.kept = {}

    def addresses_of(self, names):
        """The address lists of the named roles, then those of the param storage."""
        return [self.addresses[self.roles.index(n)] for n in names] + self.addresses[len(self.roles):]

    def for_grads(self, grad_addresses):
        """This call's lists: the prepared ones with this step's grads."""
        call = object.__new__(Prepared)
        call.__dict__.update(self.__dict__)
        call.addresses = list(self.addresses)
        call.addresses[self.grads_role] = grad_addresses
        return call
