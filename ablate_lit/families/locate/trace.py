"""Check located pre-outs on one real forward pass, and settle what only a forward pass shows.

Observers on every module record which module returned which tensor. For each call of a located
out-projection (in execution order) the trace then knows:
  * that it runs at all (a model may use a projection's weight directly, never calling it);
  * how often it runs per forward pass: a layer applied N times (ALBERT shares one layer across
    the depth) becomes N layers of neurons, one per application, never one standing for N;
  * what produced its input. The heads' concatenated output (TransformerLens ``hook_z``) comes from
    tensor operations or from an attention module (BERT's self-attention feeding ``output.dense``).
    A norm in between (timm's ``scale_attn_norm``, EVA-02's ``scale_attn_inner``) moves the hook
    to the norm's input, which is the heads' output; any other module in between is refused;
  * that its input is ``[batch, pos, n_heads * head_dim]`` (windowed attention, as in Swin, folds
    windows into the batch: resampling by sample index is then refused);
  * that the hooked value equals the output of the layer's ``scaled_dot_product_attention`` call,
    heads concatenated, where the model makes one. Tensor operations that no module marks can
    change the heads' output before the projection (Qwen3-Next's gate ``z * sigmoid(g)``,
    DiffLlama's differential heads): such a model is refused, never ablated at the wrong place.
    A model that does not call SDPA (an eager attention) is located but not checked this way, and
    its description says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate_lit.common.errors import AblateError
from ablate_lit.families.base import PreOut
from ablate_lit.families.locate.layout import OPTIONS, is_activation, is_attention, is_norm


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _same_as_heads(value: torch.Tensor, attention: torch.Tensor) -> bool | None:
    """Whether ``value`` [..., n_heads * head_dim] is the SDPA output [batch, heads, pos, head_dim] with
    its heads concatenated (None when the shapes cannot be compared)."""
    if attention.dim() != 4 or attention.numel() != value.numel():
        return None
    for z in (attention.transpose(1, 2), attention):
        if torch.allclose(z.reshape(value.shape).float(), value.float(), rtol=1e-4, atol=1e-6, equal_nan=True):
            return True
    return False


class _Recording:
    """One forward pass with every module watched: which module produced each tensor, the first input
    of each module's last call, each hooked module's calls (with the SDPA calls made before them)."""

    def __init__(self, model: nn.Module, pre_outs: list[PreOut]):
        self.model, self.pre_outs = model, pre_outs
        self.produced: dict[int, nn.Module] = {}  # id(tensor) -> the module that returned it (pass-throughs excluded)
        self.first_input: dict[int, torch.Tensor] = {}  # id(module) -> the first input of its last call
        self.keep: list = []  # holds every traced tensor, so no id is reused during the pass
        self.calls: list[tuple] = []  # (module, its input, SDPA calls before it, the input's producer, its input)
        self.attention_outputs: list[torch.Tensor] = []

    def _after(self, module, args, output) -> None:
        ins = _tensors(args)
        if ins:
            self.first_input[id(module)] = ins[0]
        for t in _tensors(output):
            if not any(t is a for a in ins) and id(t) not in self.produced:  # the innermost module that made it
                self.produced[id(t)] = module
                self.keep.append(t)

    def _before(self, module, args) -> None:
        x = args[0] if args else None
        source = self.produced.get(id(x))
        self.calls.append((module, x, len(self.attention_outputs), source, self.first_input.get(id(source))))

    def run(self, forward: Callable[[], object]):
        sdpa = F.scaled_dot_product_attention

        def recording_sdpa(*args, **kwargs):
            out = sdpa(*args, **kwargs)
            self.attention_outputs.append(out)
            return out

        handles = [m.register_forward_hook(self._after) for m in self.model.modules()]
        handles += [p.module.register_forward_pre_hook(self._before) for p in self.pre_outs]
        F.scaled_dot_product_attention = recording_sdpa
        try:
            with torch.no_grad():
                return forward()
        except AblateError:
            raise
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise AblateError(
                f"a test forward pass of {type(self.model).__name__} failed ({reason}); the model cannot be run "
                "as this family runs it"
            ) from exc
        finally:
            F.scaled_dot_product_attention = sdpa
            for h in handles:
                h.remove()


def trace(model: nn.Module, pre_outs: list[PreOut], forward: Callable[[], object], batch_size: int):
    """Run ``forward()`` (a batch of ``batch_size`` inputs through ``model``) once; return (the pre-outs
    in execution order, hooked where the heads' output enters, one per application; forward's result)."""
    names = {id(m): n for n, m in model.named_modules()}
    targets = {id(p.module): p for p in pre_outs}
    rec = _Recording(model, pre_outs)
    result = rec.run(forward)
    ran = Counter(id(c[0]) for c in rec.calls)
    for p in pre_outs:
        if not ran[id(p.module)]:
            raise AblateError(
                f"{p.name} did not run in a forward pass (this family's forward does not reach it, or the "
                f"model uses its weights directly); pass {OPTIONS} naming a module that receives the heads' output"
            )
    located, seen, used = [], Counter(), set()
    for module, x, n_sdpa, source, source_input in rec.calls:
        p = targets[id(module)]
        if not isinstance(x, torch.Tensor) or x.shape[-1] != p.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AblateError(f"{p.name} receives {got}, not [..., {p.width}]; pass {OPTIONS}")
        hooked, name, value = _hook_place(p, module, x, source, source_input, rec.produced, names)
        verified = False
        if p.site == "attn" and n_sdpa and n_sdpa - 1 not in used:  # this layer's attention ran SDPA
            used.add(n_sdpa - 1)
            verified = _check_heads(p, value, rec.attention_outputs[n_sdpa - 1])
        located.append(
            replace(
                p,
                layer=len(located),
                module=hooked,
                name=name,
                application=seen[id(module)],
                n_applications=ran[id(module)],
                batch_major=x.dim() == 3 and x.shape[0] == batch_size,
                verified=bool(verified),
            )
        )
        seen[id(module)] += 1
    return located, result


def _hook_place(p: PreOut, module, x, source, source_input, produced: dict, names: dict):
    """(module to hook, its name, the value it receives): ``p``'s module, or the norm that sits between
    the heads (or the MLP's activation) and it; anything else in between is refused."""
    expected = is_attention if p.site == "attn" else is_activation  # what may produce the hooked value
    what = "the heads' output" if p.site == "attn" else "the MLP's hidden units"
    option = "⟨--model.out_proj⟩" if p.site == "attn" else "⟨--model.mlp_proj⟩"
    if source is None or expected(source):
        return module, p.name, x
    if not is_norm(source):
        raise AblateError(
            f"{type(source).__name__} '{names.get(id(source))}' transforms {what} before "
            f"{p.name}; ablate_lit hooks {what} themselves: pass {option} PATH naming the module "
            "that receives them"
        )
    name = names.get(id(source), p.name)
    earlier = produced.get(id(source_input))
    if earlier is not None and not expected(earlier):
        raise AblateError(
            f"{p.name} does not receive {what}: its input comes from the norm '{name}', fed by "
            f"{type(earlier).__name__} '{names.get(id(earlier))}'; pass {option} PATH naming "
            f"the module that receives {what}"
        )
    return source, name, source_input


def _check_heads(p: PreOut, value: torch.Tensor, attention: torch.Tensor) -> bool | None:
    """The layer's attention ran SDPA: the hooked value must be its output (None: not comparable)."""
    verified = _same_as_heads(value, attention)
    if verified is False:
        raise AblateError(
            f"{p.name} receives the attention heads' output changed by tensor operations that no "
            "module marks (a gate such as z * sigmoid(g), or a combination of heads); ablate_lit hooks "
            "the heads' output itself (hook_z) and cannot reach it in this model"
        )
    return verified
