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
  * that the hooked value equals the layer's attention output, heads concatenated: the output of
    its ``scaled_dot_product_attention`` call, or, for attention written out (eager), the product
    whose first factor holds attention weights (computed from a softmax). Tensor
    operations that no module marks can change the heads' output before the projection (Qwen3-Next's
    gate ``z * sigmoid(g)``, DiffLlama's differential heads, MViTv2's pooled query added to the
    heads' output): an SDPA model is then refused, never ablated at the wrong place. A place that
    cannot be checked (an eager product that differs, or no comparable attention output at all) is
    only ablated when the user allows it (``--model.allow_unchecked``), and the run says which
    layers were not checked and why.

The pass runs inside ``Unchanged``: whatever it changes in the model (BigBird switching itself to
full attention on a short input) is put back, so the run scores the model as the user gave it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ablate_lit.common.errors import AblateError
from ablate_lit.families.locate.layout import OPTIONS, is_activation, is_attention, is_norm
from ablate_lit.families.locate.unchanged import Unchanged
from ablate_lit.sites.pre_out import PreOut


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6, equal_nan=True)


def _each_row_found(rows: torch.Tensor, among: torch.Tensor) -> bool:
    """Every row of ``rows`` [n, width] equals some row of ``among`` [m, width] (within rtol 1e-4, atol 1e-6)."""
    if rows.shape[0] > among.shape[0]:
        return False
    rows, among = rows.double(), among.double()
    gap = torch.cdist(rows, among, p=float("inf")).min(1).values
    return bool((gap <= 1e-6 + 1e-4 * rows.abs().amax(1)).all())


def _same_as_heads(value: torch.Tensor, attention: torch.Tensor) -> bool | None:
    """Whether ``value`` [..., n_heads * head_dim] holds an attention output with its heads concatenated:
    ``attention`` laid out [..., heads, pos, head_dim] (SDPA's; bmm's [batch * heads, pos, head_dim]) or
    [..., pos, heads, head_dim], its positions in the same order, or reordered and cropped (windows
    grouped over a padded map, as in Twins' locally-grouped attention: each position's vector must then
    be among the attention's), or the same numbers in another layout (``_a_layout_of``). None when the
    shapes cannot be compared."""
    if _a_layout_of(value, attention):
        return True
    width = value.shape[-1]
    if attention.numel() < value.numel() or attention.numel() % width or attention.dim() < 3:
        return None
    if width % attention.shape[-1]:
        return None
    heads, rows = width // attention.shape[-1], value.reshape(-1, width)
    candidates = [attention.reshape(-1, width)]
    if attention.dim() >= 4 and attention.shape[-3] == heads:
        candidates.insert(0, attention.transpose(-2, -3).reshape(-1, width))
    elif attention.dim() == 3 and attention.shape[0] % heads == 0:
        candidates.insert(0, attention.reshape(-1, heads, *attention.shape[1:]).transpose(1, 2).reshape(-1, width))
    if any(c.shape == rows.shape and _close(c, rows) for c in candidates):
        return True
    return any(_each_row_found(rows, c) for c in candidates)


def _a_layout_of(value: torch.Tensor, attention: torch.Tensor) -> bool:
    """Whether ``value`` holds exactly ``attention``'s numbers, only moved (axes permuted, split or merged:
    Longformer's chunked [batch * heads, chunks, window, head_dim], XCiT's [batch, heads, head_dim, pos]):
    the two sorted are equal within the tolerance of ``_close``. Sorting moves no number by more than the
    largest gap between paired ones, so a layout change passes and an added or changed term (a gate, a
    pooled query, a difference of heads) does not."""
    if attention.numel() != value.numel():
        return False
    return _close(attention.flatten().sort().values, value.flatten().sort().values)


class _Recording:
    """One forward pass with every module watched: which module produced each tensor, the first input
    of each module's last call, each hooked module's calls (with the attention outputs computed before them)."""

    def __init__(self, model: nn.Module, pre_outs: list[PreOut]):
        self.model, self.pre_outs = model, pre_outs
        self.produced: dict[int, nn.Module] = {}  # id(tensor) -> the module that returned it (pass-throughs excluded)
        self.first_input: dict[int, torch.Tensor] = {}  # id(module) -> the first input of its last call
        self.keep: list = []  # holds every traced tensor, so no id is reused during the pass
        # (module, its input, attention outputs before it, the input's producer, its input)
        self.calls: list[tuple] = []
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

    def run(self, forward: Callable[[], object], hint: str = ""):
        handles = [m.register_forward_hook(self._after) for m in self.model.modules()]
        handles += [p.module.register_forward_pre_hook(self._before) for p in self.pre_outs]
        try:
            with torch.no_grad(), Unchanged(self.model) as self.kept, _AttentionOutputs(self.attention_outputs):
                return forward()
        except AblateError:
            raise
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise AblateError(
                f"a test forward pass of {type(self.model).__name__} failed ({reason}); the model cannot be run "
                f"as this family runs it{hint}"
            ) from exc
        finally:
            for h in handles:
                h.remove()


_PRODUCTS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm, torch.einsum}
_SOFTMAX = {torch.softmax, F.softmax, torch.Tensor.softmax, torch.special.softmax}


class _AttentionOutputs(TorchFunctionMode):
    """Records what attention computes during a pass, in call order: every ``scaled_dot_product_attention``
    output (kind "sdpa"), and every product (matmul, bmm, einsum) whose first factor holds attention
    weights (kind "eager": ``softmax(q k^T) @ v`` written out). Attention weights are a softmax's output
    and whatever is computed from it other than by a product (dropout, a permutation, CaiT's talking-heads
    mixing); a product's output holds values, not weights."""

    def __init__(self, outputs: list):
        super().__init__()
        self.outputs = outputs
        self.weights: set[int] = set()
        self.keep: list = []  # holds the weight tensors, so no id is reused during the pass

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is F.scaled_dot_product_attention:
            self.outputs.append(("sdpa", out))
            return out
        given = [a for a in args if isinstance(a, torch.Tensor)]
        if func is torch.einsum and not given and len(args) > 1:  # einsum(equation, [a, b])
            given = [a for a in args[1] if isinstance(a, torch.Tensor)]
        if func in _PRODUCTS:
            if given and id(given[0]) in self.weights and isinstance(out, torch.Tensor):
                self.outputs.append(("eager", out))
        elif func in _SOFTMAX or any(id(a) in self.weights for a in given):
            for t in _tensors(out):
                self.weights.add(id(t))
                self.keep.append(t)
        return out


def trace(model: nn.Module, pre_outs: list[PreOut], forward: Callable[[], object], batch_size: int, hint: str = ""):
    """Run ``forward()`` (a batch of ``batch_size`` inputs through ``model``) once, leaving the model
    unchanged; return (the pre-outs in execution order, hooked where the heads' output enters, one per
    application; forward's result; what the pass had changed in the model, restored)."""
    names = {id(m): n for n, m in model.named_modules()}
    targets = {id(p.module): p for p in pre_outs}
    rec = _Recording(model, pre_outs)
    result = rec.run(forward, hint)
    ran = Counter(id(c[0]) for c in rec.calls)
    for p in pre_outs:
        if not ran[id(p.module)]:
            raise AblateError(
                f"{p.name} did not run in a forward pass (this family's forward does not reach it, or the "
                f"model uses its weights directly); pass {OPTIONS} naming a module that receives the heads' output"
            )
    located, seen, used = [], Counter(), set()
    for module, x, n_outputs, source, source_input in rec.calls:
        p = targets[id(module)]
        if not isinstance(x, torch.Tensor) or x.shape[-1] != p.width:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AblateError(
                f"{p.name} receives {got}, not [..., {p.width}] ({p.n_heads} heads x {p.head_dim}); pass "
                f"⟨--model.head_dim N⟩ (the width of one head's output) or {OPTIONS}"
            )
        hooked, name, value = _hook_place(p, module, x, source, source_input, rec.produced, names)
        verified, unchecked = False, ""
        if p.site == "attn":
            verified, unchecked = _check_heads(p, value, rec.attention_outputs, n_outputs, used)
        located.append(
            replace(
                p,
                layer=len(located),
                module=hooked,
                name=name,
                application=seen[id(module)],
                n_applications=ran[id(module)],
                batch_major=x.dim() == 3 and x.shape[0] == batch_size,
                verified=verified,
                unchecked=unchecked,
            )
        )
        seen[id(module)] += 1
    return located, result, rec.kept.changed


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


def _check_heads(p: PreOut, value: torch.Tensor, outputs: list, n: int, used: set) -> tuple[bool, str]:
    """(whether the hooked value equals the attention output this layer computed last, else why it could
    not be checked). An SDPA output that differs is refused: tensor operations changed the heads' output."""
    if not n or n - 1 in used:
        return False, (
            "it runs no attention that could be compared (no scaled_dot_product_attention, no product of "
            "softmax attention weights and values)"
        )
    used.add(n - 1)
    kind, attention = outputs[n - 1]
    same = _same_as_heads(value, attention)
    if same is False and kind == "sdpa":
        raise AblateError(
            f"{p.name} receives the attention heads' output changed by tensor operations that no "
            "module marks (a gate such as z * sigmoid(g), or a combination of heads); ablate_lit hooks "
            "the heads' output itself (hook_z) and cannot reach it in this model"
        )
    if same:
        return True, ""
    what = "scaled_dot_product_attention output" if kind == "sdpa" else "attention weights x values"
    if same is None:
        shape = tuple(attention.shape)
        return False, f"its last {what} has another shape ({shape}) than the input {tuple(value.shape)}"
    return False, (
        f"its input differs from the {what} computed just before (something is added to or changes the "
        "heads' output on the way)"
    )
