"""The model settings, declared once: where the model comes from (``Source``), how its layout is found
(``Layout``), and how it is placed and quantized (``Placement``).

Each setting is one dataclass field here, with its type, default and the docstring ``--help`` shows.
A family's LightningModule takes the settings that apply to it as flat keyword arguments, as the
command line writes them (``--model.blocks``, ``--model.quantization``) and ``run()`` takes them
(``blocks=``, ``quantization=``): ``takes`` writes its constructor's signature and docstring from
these fields, and ``ModelSettings`` gathers the values back into the three groups that the loaders,
the locators and the placement read.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Source:
    """Where the model comes from."""

    name_or_path: str = ""
    """hub model id (facebook/opt-1.3b, FacebookAI/roberta-large, google/vit-base-patch16-224), timm model name
    (vit_base_patch16_224.augreg2_in21k_ft_in1k), or a local folder (save_pretrained, or timm save_for_hf)."""
    gguf_file: str | None = None
    """a .gguf file inside name_or_path to load instead (converted once, then cached)."""
    dtype: str = "float32"
    """weights' dtype: float32, bfloat16, float16 or auto (as stored)."""
    revision: str | None = None
    """hub revision (branch, tag or commit) of a Hugging Face model."""
    attn_implementation: str | None = None
    """eager, sdpa, flash_attention_2 (default: transformers' choice)."""
    generator: str | None = None
    """causal LM that writes the text for resample:generated (default: a causal LM writes its own; a masked LM
    reads a built-in English sample)."""
    tokenizer: str | None = None
    """tokenizer folder or hub id, for a model folder saved without one (default: the model's)."""


@dataclass(frozen=True)
class Layout:
    """How the neurons are found: where a model's layout is not found, or a part of one is wanted."""

    blocks: str | None = None
    """path of the list of transformer blocks (e.g. model.layers), for a model whose layout is not found."""
    out_proj: str | None = None
    """path inside a block of the attention output projection (e.g. self_attn.o_proj)."""
    mlp_proj: str | None = None
    """path inside a block of the MLP output projection (e.g. mlp.down_proj), for --ablation.site mlp."""
    head_dim: int | None = None
    """width of one head's output, for a model that states it under another name (timm LeViT's val_dim)."""
    allow_unchecked: bool = False
    """ablate the out-projection's input even where a check pass could not show it equal to the attention heads'
    output (the run says which layers and why)."""
    check_length: int | None = None
    """tokens of the check forward pass (default 8); a model that takes inputs of one length only (Nystromformer)
    needs that length, as --data.context_length does."""


@dataclass(frozen=True)
class Placement:
    """How the weights are placed and stored."""

    quantization: str | dict | None = None
    """load the weights quantized: quanto-int8, quanto-int4, torchao-int8 (CPU or GPU), bnb-8bit, bnb-4bit
    (bitsandbytes, CUDA), or a Hugging Face quantization config as a dict (Hugging Face models)."""
    device_map: str | dict | None = None
    """place the model across devices (auto, balanced, or {module: device|cpu|disk}) for one larger than a
    device; one process only."""
    offload_folder: str | None = None
    """where a device map's disk entries are kept."""


GROUPS = (Source, Layout, Placement)
SOURCE, LAYOUT, PLACEMENT = (tuple(f.name for f in dataclasses.fields(g)) for g in GROUPS)
"""The names of each group's settings, in the order ``--help`` lists them."""


def _attribute_docs(cls) -> dict[str, str]:
    """The docstring under each field of a dataclass, joined into one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    docs, last = {}, None
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif last and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[last], last = " ".join(str(node.value.value).split()), None
    return docs


@dataclass(frozen=True)
class Setting:
    name: str
    group: type
    annotation: object
    default: object
    doc: str


SETTINGS: dict[str, Setting] = {
    f.name: Setting(f.name, group, typing.get_type_hints(group)[f.name], f.default, _attribute_docs(group)[f.name])
    for group in GROUPS
    for f in dataclasses.fields(group)
}
"""Every model setting by name (each name belongs to one group)."""


@dataclass(frozen=True)
class ModelSettings:
    """A model's settings, by group."""

    source: Source = field(default_factory=Source)
    layout: Layout = field(default_factory=Layout)
    placement: Placement = field(default_factory=Placement)

    @classmethod
    def of(cls, **values) -> ModelSettings:
        """The settings named in ``values`` (any of ``SETTINGS``), the others at their defaults."""
        grouped: dict[type, dict] = {group: {} for group in GROUPS}
        for name, value in values.items():
            grouped[SETTINGS[name].group][name] = value
        return cls(*(group(**grouped[group]) for group in GROUPS))

    def values(self, names) -> dict:
        """``names``' values, in that order (a module's hyperparameters)."""
        return {n: getattr(getattr(self, _ATTRIBUTE[SETTINGS[n].group]), n) for n in names}


_ATTRIBUTE = {Source: "source", Layout: "layout", Placement: "placement"}


def takes(*names: str):
    """A constructor (or ``from_model``) whose ``**settings`` are the model settings ``names``: its
    signature and its docstring's ``Args`` become those of the settings (what LightningCLI, ``--help``
    and ``run()`` read), after its own parameters. ``given`` reads the values of a call back."""

    def decorate(fn):
        own = [p for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD]
        rest = [SETTINGS[n] for n in names if n not in {p.name for p in own}]
        keyword = inspect.Parameter.KEYWORD_ONLY
        added = [inspect.Parameter(s.name, keyword, default=s.default, annotation=s.annotation) for s in rest]
        fn.__signature__ = inspect.Signature(own + added)
        fn.__annotations__ = {**fn.__annotations__, **{s.name: s.annotation for s in rest}}
        documented = [SETTINGS[n] for n in names]
        args = "\n".join(f"    {s.name}: {s.doc}" for s in documented)
        fn.__doc__ = f"{(fn.__doc__ or '').strip()}\n\nArgs:\n{args}\n"
        fn.settings = names
        return fn

    return decorate


def given(fn, settings: dict, **own) -> dict:
    """The values of the model settings a call of ``fn`` (decorated by ``takes``) gives: those in
    ``settings`` and ``own`` (its own parameters that are settings), the rest at their defaults, in
    ``fn.settings``' order. A name ``fn`` does not take is refused as Python refuses it (TypeError)."""
    unknown = sorted(set(settings) - set(fn.settings))
    if unknown:
        raise TypeError(f"{fn.__qualname__}() got an unexpected keyword argument '{unknown[0]}'")
    values = {**settings, **own}
    return {n: values.get(n, SETTINGS[n].default) for n in fn.settings}
