"""The LightningModule logic shared by every family: hooks, scoring, calibration forward."""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
from torch.utils.data import Dataset

from ablate_lit.ablation.hooks import PreOutHooks, StopForward
from ablate_lit.families.base import Architecture
from ablate_lit.families.layout import attention_modules, locate
from ablate_lit.families.trace import trace
from ablate_lit.stats.token_metrics import TokenScores


def _pattern(name: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "*", name)


class AblationModule(L.LightningModule):
    """Wraps a model whose attention pre-outs are hooked.

    Subclasses load ``self.model``, call ``locate_pre_outs`` (which sets ``self.pre_outs`` and
    ``self.hooks``), and implement ``logits_and_labels`` (how a batch becomes scored predictions),
    ``example_forward`` (a small forward pass to check the hook points on) and ``random_inputs``
    (the randomised inputs for resampling).
    """

    family = "base"
    resample_sources: tuple[str, ...] = ()
    data_types: tuple[str, ...] = ()
    """Names of the DataModule classes this family evaluates on."""

    def __init__(self):
        super().__init__()
        self.scores = TokenScores()
        self.hooks: PreOutHooks
        self._most_batches = 0  # largest batch count of any process in the running epoch (sharded runs)

    @classmethod
    def _wrapping(cls, model, name: str, **hparams):
        """An instance around ``model`` (already in memory: nothing is loaded), in eval mode, whose
        hyperparameters say what it is (``name`` stands for ``name_or_path`` in run folders and tables)."""
        self = cls.__new__(cls)
        AblationModule.__init__(self)
        self.save_hyperparameters({"name_or_path": name, **hparams})
        self.model = model.eval()
        return self

    def logits_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scored logits [N, n_classes] and labels [N] (-100 = not scored)."""
        raise NotImplementedError

    def example_forward(self, n: int) -> torch.Tensor:
        """The model's output on ``n`` small synthetic inputs (the hook points are checked on it)."""
        raise NotImplementedError

    def check_example(self, output: torch.Tensor) -> None:
        """Family-specific checks of ``example_forward``'s output (e.g. that a causal LM is causal)."""

    def locate_pre_outs(self, config, known: Architecture | None, blocks: str | None, out_proj: str | None) -> None:
        """Find every layer's pre-out (``families.layout``) and check it on one forward pass (``families.trace``)."""
        pre_outs, self.layout_source = locate(self.model, config, known, blocks, out_proj)
        self.pre_outs, output = trace(self.model, pre_outs, lambda: self.example_forward(2), batch_size=2)
        self.check_example(output)
        self.hooks = PreOutHooks(self.pre_outs, self.model)
        self.site, self._config = "attn", config
        self._by_site = {"attn": (self.pre_outs, self.hooks)}
        names = {id(m): n for n, m in self.model.named_modules()}
        blocks = {names[id(p.block)] for p in self.pre_outs}
        self.unhooked = [path for path, _ in attention_modules(self.model)
                         if not any(path == b or path.startswith(b + ".") for b in blocks)]
        """Attention modules outside the ablated blocks (CaiT's class-attention blocks, a second tower)."""

    def select_site(self, site: str) -> None:
        """Hook the attention heads' output (``attn``) or the MLP hidden units (``mlp``: located in the
        blocks of the attention layers, ``families.mlp``, and checked on one forward pass)."""
        if site not in self._by_site:
            from ablate_lit.families.mlp import locate_mlp

            attention = self._by_site["attn"][0]
            found = locate_mlp(self.model, self._config, attention, self.hparams.get("mlp_proj"))
            pre_outs, _ = trace(self.model, found, lambda: self.example_forward(2), batch_size=2)
            self._by_site[site] = (pre_outs, PreOutHooks(pre_outs, self.model))
        self.site = site
        self.pre_outs, self.hooks = self._by_site[site]

    def describe_pre_outs(self) -> str:
        """One line: how many layers and neurons are hooked, where, and how the place was found."""
        p = self.pre_outs[0]
        names = list(dict.fromkeys(q.name for q in self.pre_outs))
        where = names[0] if len(names) == 1 else ", ".join(dict.fromkeys(_pattern(n) for n in names))
        shared = f", one module applied {p.n_applications} times" if p.shared else ""
        if p.site == "mlp":
            between = "" if p.direct else f", the input of a {type(p.module).__name__} before the output projection"
            return (f"MLP hidden units: {len(self.pre_outs)} layers x {p.width} neurons each, at {where}{between}{shared} "
                    "(checked against the intermediate size and on a forward pass)")
        between = "" if p.direct else f", the input of a {type(p.module).__name__} between the heads and the out-projection"
        checked = sum(q.verified for q in self.pre_outs)
        n = len(self.pre_outs)
        checked = (", checked equal to the attention output" if checked == n else
                   ", not checked against the attention output (it runs no scaled_dot_product_attention)" if not checked else
                   f", {checked} of {n} layers checked equal to the attention output (the others run no "
                   "scaled_dot_product_attention)")
        others = (f"; not ablated: {len(self.unhooked)} attention module(s) outside these blocks "
                  f"({', '.join(self.unhooked[:2])}{', ...' if len(self.unhooked) > 2 else ''})" if self.unhooked else "")
        return (f"pre-outs: {len(self.pre_outs)} layers x {p.n_heads} heads x {p.head_dim} = {p.width} neurons each, at "
                f"{where}{between}{shared} ({self.layout_source}{checked}){others}")

    def random_inputs(self, source: str, n: int, seed: int, data) -> Dataset:
        """``n`` randomised inputs from ``source``, shaped like ``data``'s evaluation inputs, with indices 0..n-1."""
        raise NotImplementedError

    def data_connection(self) -> tuple:
        """What the DataModule's ``connect`` needs from the model (tokenizer; or preprocessing and classes)."""
        raise NotImplementedError

    def connect_data(self, data) -> None:
        """Check that ``data`` is this family's kind of DataModule and connect it to the model."""
        from ablate_lit.errors import AblateError

        if type(data).__name__ not in self.data_types:
            raise AblateError(f"{type(self).__name__} evaluates on {' or '.join(self.data_types)}, not {type(data).__name__}; "
                              f"set --data ablate_lit.{self.data_types[0]}")
        data.connect(*self.data_connection())

    @property
    def model_label(self) -> str:
        return str(self.hparams.name_or_path).rstrip("/").split("/")[-1]

    def forward(self, batch):
        return self.logits_and_labels(batch)

    def _set_index(self, batch) -> None:
        self.hooks.sample_index = batch["index"]

    def configure_model(self) -> None:
        """Under ``--trainer.strategy fsdp2`` (a device mesh is set): shard each block, then the rest."""
        if self._device_mesh is not None:
            from ablate_lit.sharding import shard

            blocks = list({id(p.block): p.block for p in self.pre_outs}.values())  # a shared block once
            if shard(self.model, blocks, self._device_mesh) and self.trainer.is_global_zero:
                print(f"sharded: {len(blocks)} blocks and the rest of the model split over "
                      f"{self.trainer.world_size} processes (FSDP2)", flush=True)

    def _even_out(self, batch, batch_idx: int, n_batches: int) -> None:
        """Under a sharding strategy every forward gathers weights from all processes, so all must run
        as many. After batch 0 (which every process has) the processes agree on the largest batch
        count; on its last batch, a process with fewer runs the missing forwards with the hooks
        paused and the results discarded."""
        from ablate_lit.sharding import is_sharded

        if self.trainer.world_size == 1 or not is_sharded(self.trainer.strategy):
            return
        if batch_idx == 0:
            mine = torch.tensor(n_batches, device=self.device)
            self._most_batches = int(self.trainer.strategy.reduce(mine, reduce_op="max"))
        if batch_idx == n_batches - 1:
            with self.hooks.paused():
                for _ in range(self._most_batches - n_batches):
                    self.logits_and_labels(batch)

    # calibration runs as a validation epoch: forward only, the recording hooks do the rest (and may
    # end the forward pass after the last hooked layer)
    def validation_step(self, batch, batch_idx):
        self._set_index(batch)
        try:
            self.logits_and_labels(batch)
        except StopForward:
            pass
        self._even_out(batch, batch_idx, self.trainer.num_val_batches[0])

    # -- staying on the device ---------------------------------------------------------------------
    @contextmanager
    def kept_in_place(self) -> Iterator[None]:
        """Inside this block the module moves at most once to each place (device or dtype): Lightning
        moves it to the device (and, for the true half precisions, casts it) at the start of every
        ``trainer.test``/``validate`` and back to the CPU at the end; here only the first move happens
        and the move back is skipped, so the weights cross the bus once per run, not twice per point."""
        self._kept, self._placed = True, set()
        try:
            yield
        finally:
            self._kept = False

    def to(self, *args, **kwargs):
        if getattr(self, "_kept", False):
            device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
            target = (None if device is None else torch.device(device), dtype)
            if target in self._placed:
                return self
            self._placed.add(target)
        return super().to(*args, **kwargs)

    def cpu(self):
        return self if getattr(self, "_kept", False) else super().cpu()

    def on_test_epoch_start(self) -> None:
        self.scores.reset()

    kl: bool = False
    """Also score KL(unablated || ablated): with ablation hooks attached, each batch runs once more with
    them paused (the unablated reference); without (the baseline), KL is 0 by definition."""

    def test_step(self, batch, batch_idx):
        self._set_index(batch)
        reference = None
        if self.kl and self.hooks.active:
            with self.hooks.paused():
                reference, _ = self.logits_and_labels(batch)
        logits, labels = self.logits_and_labels(batch)
        if self.kl and reference is None:
            reference = logits
        self.scores.update(logits, labels, batch.get("index"), reference)
        self._even_out(batch, batch_idx, self.trainer.num_test_batches[0])

    def fingerprint(self) -> str:
        """Identifies the weights cheaply: config, dtype and checksums of a few tensors. Computed once,
        on the first call (before any strategy wraps or shards the model), so every process agrees."""
        if getattr(self, "_fingerprint", None) is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha1(type(self.model).__name__.encode())
        config = getattr(self.model, "config", None)
        if hasattr(config, "to_json_string"):
            h.update(config.to_json_string(use_diff=False).encode())
        else:  # timm
            h.update(json.dumps(getattr(self.model, "pretrained_cfg", {}), sort_keys=True, default=str).encode())
        h.update(str(next(self.model.parameters()).dtype).encode())
        named = dict(self.model.named_parameters())
        proj_ids = {id(p.proj) for p in self._by_site["attn"][0]}  # the same whatever site is hooked
        projections = [n + ".weight" for n, m in self.model.named_modules() if id(m) in proj_ids]
        for name in sorted(named)[:: max(1, len(named) // 16)] + projections:
            t = named.get(name)
            if t is not None:
                t = t.detach().double()
                h.update(f"{name}:{t.sum().item():.10e}:{t.abs().sum().item():.10e}".encode())
        return h.hexdigest()[:16]


class TextAblationModule(AblationModule):
    """Shared by the text families: token windows, and the three text resample sources."""

    resample_sources = ("random_chars", "random_tokens", "generated", "data")
    architectures: dict = {}
    """model_type -> tested layout (the family's registry)."""

    @classmethod
    def from_model(cls, model, tokenizer, name: str | None = None, generator: str | None = None, blocks: str | None = None,
                   out_proj: str | None = None, mlp_proj: str | None = None):
        """Wrap a Hugging Face model and tokenizer already in memory (fine-tuned, edited, never saved):
        the same checks as a loaded one (its family, where its neurons are, one forward pass). ``name``
        names it in run folders and tables (default: its config's ``name_or_path``, else its type)."""
        from ablate_lit.errors import AblateError
        from ablate_lit.families.hf import check_family, check_generator, heads_config

        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "model_type"):
            raise AblateError(f"{cls.__name__}.from_model takes a Hugging Face model (with a .config), not a "
                              f"{type(model).__name__}")
        if tokenizer is None or not callable(tokenizer):
            raise AblateError(f"{cls.__name__}.from_model needs the model's tokenizer (tokenizer=...)")
        check_family(config, cls.family)
        if generator:
            check_generator(generator)
        label = name or str(getattr(config, "name_or_path", "") or "").rstrip("/") or config.model_type
        self = cls._wrapping(model, label, dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                             generator=generator, blocks=blocks, out_proj=out_proj, mlp_proj=mlp_proj, gguf_file=None)
        self.tokenizer = tokenizer
        self.locate_pre_outs(heads_config(config, cls.family), cls.architectures.get(config.model_type), blocks, out_proj)
        return self

    def data_connection(self) -> tuple:
        return (self.tokenizer,)

    def max_positions(self) -> int | None:
        """Longest window the model takes (RoBERTa-style position ids start after the padding index)."""
        config = self.model.config
        limit = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        if limit and config.model_type in ("roberta", "xlm-roberta"):
            limit -= config.pad_token_id + 1
        return limit

    def connect_data(self, data) -> None:
        super().connect_data(data)
        limit = self.max_positions()
        if limit and data.context_length > limit:
            from ablate_lit.errors import AblateError

            raise AblateError(f"data.context_length {data.context_length} exceeds the model's {limit} positions; "
                              f"lower --data.context_length to at most {limit}")

    def example_forward(self, n: int) -> torch.Tensor:
        """Logits on ``n`` copies of 8 ordinary tokens; the copies differ only in their last token."""
        from ablate_lit.families.hf import PROBE

        probe = self.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        ids = torch.tensor(probe[:8]).repeat(n, 1)
        ids[1:, -1] = probe[8]
        return self.model(input_ids=ids.to(self.model.device), **self.forward_kwargs).logits

    forward_kwargs: dict = {}
    """Keyword arguments of every forward pass of the model (causal LMs: no key/value cache)."""

    def default_generator(self):
        """(model, tokenizer) that writes the text for resample:generated when none is configured; None
        means the built-in English sample."""
        return None

    def random_inputs(self, source: str, n: int, seed: int, data):
        from ablate_lit.data import random_inputs as rnd
        from ablate_lit.data.text import WindowDataset
        from ablate_lit.families.causal_lm import load_causal_lm

        args = (self.tokenizer, n, data.context_length, data.prefix, data.suffix, seed)
        if source == "data":
            return data.calibration_sample(n, seed)
        if source == "random_tokens":
            return WindowDataset(rnd.random_tokens(*args))
        if source == "random_chars":
            return WindowDataset(rnd.random_chars(*args))
        if source != "generated":
            raise ValueError(source)
        if self.hparams.get("generator"):
            model, tokenizer, _ = load_causal_lm(self.hparams.generator)
            generator = (model.to(self.device), tokenizer)
        else:
            generator = self.default_generator()
        if generator is None:
            return WindowDataset(rnd.builtin_sample(*args))
        return WindowDataset(rnd.generated(*args, generator=generator[0], generator_tokenizer=generator[1]))
