"""Forward pre-hooks on every layer's attention out-projection, always removed on exit."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ablate_lit.sites.pre_out import PreOut


class PreOutHooks:
    """Records or replaces the pre-out ``[batch, pos, n_heads*d_head]`` of each layer.

    Both modes are context managers whose hooks are removed in ``finally``, so an exception inside
    the block never leaves the model hooked.
    """

    def __init__(self, pre_outs: Sequence[PreOut], root: nn.Module | None = None):
        self.pre_outs = list(pre_outs)
        self.root = root
        """The whole model: a shared module's call count restarts at each of its forward passes."""
        self._handles: list = []
        self.sample_index: torch.Tensor | None = None
        """Dataset indices of the batch being evaluated ([batch]); resampling picks cache rows by them."""
        self._paused = False
        self._calls: dict[int, int] = {}
        self.home: torch.device | None = None
        """Set for a model placed by a device map: the device the statistics and values live on, while
        each layer runs where the map put it (recorded values move home, replacements go to the layer)."""
        if root is None and any(p.shared for p in self.pre_outs):
            raise ValueError("shared modules need the root model to count their calls per forward pass")

    @property
    def n_layers(self) -> int:
        return len(self.pre_outs)

    @property
    def width(self) -> int:
        return self.pre_outs[0].width

    def _attach(self, make_hook: Callable[[int], Callable | None]) -> None:
        """One pre-hook per hooked module. A module run several times per forward pass (a shared layer)
        gets a dispatcher: its k-th call in a pass is layer ``applications[k]``."""
        groups: dict[int, list[PreOut]] = {}
        for p in self.pre_outs:
            groups.setdefault(id(p.module), []).append(p)
        for group in groups.values():
            hooks = [make_hook(p.layer) for p in group]  # in execution order
            if all(h is None for h in hooks):
                continue
            hook = hooks[0] if len(group) == 1 else self._dispatcher(id(group[0].module), hooks)
            self._handles.append(group[0].module.register_forward_pre_hook(hook))
        if len(groups) < len(self.pre_outs):
            self._handles.append(self.root.register_forward_pre_hook(lambda module, args: self._calls.clear()))

    def _dispatcher(self, key: int, hooks: list[Callable | None]) -> Callable:
        def hook(module, args):
            k = self._calls.get(key, 0)
            self._calls[key] = k + 1
            h = hooks[k % len(hooks)]
            return None if h is None else h(module, args)

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Attached hooks do nothing inside this block (forward passes whose results are discarded)."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    @contextmanager
    def _attached(self, make_hook: Callable[[int], Callable]) -> Iterator[None]:
        self._attach(make_hook)
        try:
            yield
        finally:
            self.remove()

    def recording(self, record: Callable[[int, torch.Tensor], None], stop_after_last: bool = False):
        """Call ``record(layer, x)`` with each layer's pre-out ``x`` [batch, pos, width]. With
        ``stop_after_last`` the forward pass ends (``StopForward``) once the last layer is recorded:
        calibration needs nothing after it (the rest of the last block, the final norm, the head)."""
        last, home = self.pre_outs[-1].layer, self.home

        def make_hook(layer):
            def hook(module, args):
                if not self._paused:
                    record(layer, args[0] if home is None else args[0].to(home))
                    if stop_after_last and layer == last:
                        raise StopForward

            return hook

        return self._attached(make_hook)

    def perturbing(self, kept: dict):
        """Each layer's pre-out ``x`` becomes ``x + delta``, ``delta`` a zero tensor that requires grad, and
        ``kept[layer] = (x, delta)``: the gradient of a loss with respect to ``delta`` is its gradient with
        respect to the pre-out through everything after it (attribution), while the parameters need none."""
        home = self.home

        def make_hook(layer):
            def hook(module, args):
                if self._paused:
                    return None
                x = args[0]
                delta = torch.zeros_like(x, requires_grad=True)
                kept[layer] = (x.detach() if home is None else x.detach().to(home), delta)
                return (x + delta,) + tuple(args[1:])

            return hook

        return self._attached(make_hook)

    def ablating(
        self,
        mask: torch.Tensor,
        values: torch.Tensor | None = None,
        resample: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ):
        """Replace the neurons where ``mask`` [n_layers, width] is True.

        ``values`` [n_layers, width] gives one constant per neuron (zero, mean, peak), [n_layers, pos,
        width] one per neuron and position (optimal:+position). ``resample``
        [n_layers, n_cache, pos, width] gives, for cache row ``sample_index % n_cache``, the value at
        each position. Layers with no ablated neuron get no hook.

        Everything a hook needs is prepared here, once per point, on ``device`` (default: where the
        replacement values are): which layers have ablated neurons (read from a host copy of the
        mask), each layer's mask and values. A hook then only casts the values to the dtype it sees
        (once per dtype) and, for resampling, gathers rows by the batch's sample indices on the
        device: nothing in a batch waits for the host.
        """
        if (values is None) == (resample is None):
            raise ValueError("pass exactly one of values or resample")
        live = callable(values)
        source = values if values is not None else resample
        device = torch.device(device) if device is not None else source.device
        host_mask = mask.cpu()

        def make_hook(layer):
            return self._replacer(layer, host_mask[layer], source, live, resample is not None, device)

        if resample is not None and self.sample_index is None:
            self.sample_index = torch.zeros(1, dtype=torch.long, device=device)
        return self._attached(make_hook)

    def _replacer(self, layer: int, layer_mask: torch.Tensor, source, live: bool, resampled: bool, device):
        """The pre-hook that replaces ``layer``'s masked neurons (None where none is masked). Its mask and
        values are on ``device`` and cast once per dtype; on a dispatched model (``home`` set) once per
        (device, dtype) the layer's input arrives on, wherever accelerate runs the layer."""
        if not bool(layer_mask.any()):
            return None
        every, placed = bool(layer_mask.all()), self.home is not None
        here, replacement = layer_mask.to(device), None if live else source[layer].to(device)
        prepared: dict = {}

        def hook(module, args):
            if self._paused:
                return None
            x = args[0]
            key = (x.device, x.dtype) if placed else x.dtype
            if key not in prepared:  # (once per point, and per device on a dispatched model)
                where = x.device if placed else None
                repl = None if live else replacement.to(where, x.dtype)
                prepared[key] = (here.to(where) if placed else here, repl)
            mask, repl = prepared[key]
            if live:
                repl = source(layer).to(x.device if placed else None, x.dtype)
            if resampled:
                rows = self.sample_index.to(repl.device, non_blocking=True) if placed else self.sample_index
                repl = repl[rows % repl.shape[0], : x.shape[-2]]  # [batch, pos, width]
            elif repl.dim() == 2:
                repl = repl[: x.shape[-2]]  # one constant per position [pos, width]
            out = repl.expand_as(x).clone() if every else torch.where(mask, repl, x)
            return (out,) + tuple(args[1:])

        return hook

    def ablating_copies(self, entries: Sequence[tuple[torch.Tensor, dict]], device: torch.device | str):
        """Several ablations in one forward pass: the batch is repeated ``len(entries)`` times along its
        first dimension (``AblationModule.forward_copies``), and in copy k the neurons where entry k's
        mask [n_layers, width] is True take entry k's values (``values`` or ``resample``, as in
        ``ablating``; a table per layer, or a ``OneLayer`` holding one layer's). Exactly the results of
        ``ablating`` one entry at a time: each copy is replaced by the same ``where`` over its own rows.
        Layers where no copy ablates a neuron get no hook; masks and values are prepared on ``device``
        once, and cast once per dtype (per device too on a dispatched model)."""
        host = [(mask.cpu(), replacement) for mask, replacement in entries]

        def make_hook(layer):
            copies = []
            for mask, replacement in host:
                resampled = "resample" in replacement
                source = replacement["resample" if resampled else "values"]
                wanted = mask[layer]
                copies.append(
                    None if not bool(wanted.any()) else (wanted, source[layer], resampled, bool(wanted.all()))
                )
            return None if all(c is None for c in copies) else self._copies_replacer(copies, device)

        if any("resample" in r for _, r in entries) and self.sample_index is None:
            self.sample_index = torch.zeros(1, dtype=torch.long, device=device)
        return self._attached(make_hook)

    def _copies_replacer(self, copies: list, device):
        """The pre-hook that replaces the neurons of each copy ``k`` of the batch (None: copy left as it is)."""
        placed, prepared = self.home is not None, {}
        here = [None if c is None else (c[0].to(device), c[1].to(device), *c[2:]) for c in copies]

        def hook(module, args):
            if self._paused:
                return None
            x = args[0]
            key = (x.device, x.dtype) if placed else x.dtype
            if key not in prepared:  # (once per pass of a new dtype, or device on a dispatched model)
                at = x.device if placed else None
                prepared[key] = [None if c is None else (c[0].to(at), c[1].to(at, x.dtype), *c[2:]) for c in here]
            rows = self.sample_index
            if placed and rows is not None:
                rows = rows.to(x.device, non_blocking=True)
            xs = x.reshape(len(copies), -1, *x.shape[1:])  # [copies, batch, ..., width]
            out = [xs[k] if c is None else _replaced(xs[k], *c, rows) for k, c in enumerate(prepared[key])]
            return (torch.stack(out).reshape(x.shape),) + tuple(args[1:])

        return hook


def _replaced(x: torch.Tensor, mask, repl: torch.Tensor, resampled: bool, every: bool, rows) -> torch.Tensor:
    """``x`` (one copy's [batch, pos, width]) with the neurons of ``mask`` taken from ``repl``: a constant
    per neuron [width], per neuron and position [pos, width], or a resample cache [rows, pos, width]."""
    if resampled:
        repl = repl[rows % repl.shape[0], : x.shape[-2]]  # [batch, pos, width]
    elif repl.dim() == 2:
        repl = repl[: x.shape[-2]]
    return repl.expand_as(x).clone() if every else torch.where(mask, repl, x)


class StopForward(Exception):
    """Ends a recording forward pass after the last hooked layer (nothing after it is needed)."""


class BlockGradients:
    """GradDrop's gates (``maps.attribution``): inside ``passing()`` the output of each block's branches
    (``branches[layer]``: the modules whose outputs the block adds to the residual stream, its attention
    out-projection and MLP down-projection) carries its gradient back, except for the block ``dropped``
    names, whose branches pass none: a gradient taken then reaches the earlier pre-outs through every
    path but those through that block."""

    def __init__(self, branches: Sequence[Sequence[nn.Module]]):
        self.branches = [list(b) for b in branches]
        self.dropped: int | None = None

    @contextmanager
    def passing(self) -> Iterator[None]:
        handles = [
            module.register_forward_hook(self._gate(layer))
            for layer, modules in enumerate(self.branches)
            for module in modules
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _gate(self, layer: int):
        def hook(module, args, output):
            if torch.is_tensor(output) and output.requires_grad:
                output.register_hook(lambda grad: torch.zeros_like(grad) if self.dropped == layer else None)

        return hook
