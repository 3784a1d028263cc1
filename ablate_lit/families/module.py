"""The LightningModule logic shared by every family: hooks, scoring, calibration forward."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
from torch.utils.data import Dataset

from ablate_lit.common.errors import AblateError
from ablate_lit.common.families import FAMILIES, family_of_module
from ablate_lit.common.logs import say, warn
from ablate_lit.common.private import device_mesh
from ablate_lit.common.sharding import is_sharded, pad_forwards, shard
from ablate_lit.families.fingerprint import weights_fingerprint
from ablate_lit.families.loading.settings import ModelSettings
from ablate_lit.families.locate.describe import check_unchecked, describe
from ablate_lit.families.locate.layout import attention_modules, locate
from ablate_lit.families.locate.trace import trace
from ablate_lit.families.placement import KeptInPlace
from ablate_lit.sites.hooks import PreOutHooks, StopForward
from ablate_lit.sites.pre_out import Architecture
from ablate_lit.stats.protocol import Scores
from ablate_lit.stats.token_metrics import TokenScores


class FamilyName:
    """``cls.family`` and ``self.family``: the family whose registry entry names the class, or the
    nearest of its base classes (a user's subclass of CausalLMAblation is a causal LM)."""

    def __get__(self, obj, owner) -> str:
        found = next((f for c in owner.__mro__ if (f := family_of_module(c.__name__))), None)
        return found.name if found else "base"


class AblationModule(KeptInPlace, L.LightningModule):
    """Wraps a model whose attention pre-outs are hooked.

    Subclasses load ``self.model``, call ``locate_pre_outs`` (which sets ``self.pre_outs`` and
    ``self.hooks``), and implement ``logits_and_labels`` (how a batch becomes scored predictions),
    ``example_forward`` (a small forward pass to check the hook points on) and ``random_inputs``
    (the randomised inputs for resampling).
    """

    family = FamilyName()
    """causal_lm, masked_lm or vision: the entry of ``common.families.FAMILIES`` that names this class
    (or the nearest base class it names)."""

    @property
    def resample_sources(self) -> tuple[str, ...]:
        """The inputs ``resample:<source>`` can draw for this family."""
        return FAMILIES[self.family].resample_sources

    def __init__(self):
        super().__init__()
        self.scores = TokenScores()
        self.kl = False
        self.ablations = None
        self.hooks: PreOutHooks
        self._most_batches = 0  # largest batch count of any process in the running epoch (sharded runs)

    def evaluate_with(self, scores: Scores, kl: bool) -> None:
        """How a test epoch scores this model: ``scores`` (``stats.protocol.Scores``: token scores, or a
        task's), and whether KL(unablated || ablated) is measured: with ablation hooks
        attached each batch then runs once more with them paused (the unablated reference), unless the
        scores keep it; without (the baseline) KL is 0 by definition."""
        self.scores, self.kl = scores, kl

    @contextmanager
    def scoring_with(self, step) -> Iterator[None]:
        """Inside this block a test epoch scores ``step`` (a ``maps.step.AblationsStep``: several
        ablations per batch, each into its own scores) instead of this model's own scores."""
        self.ablations = step
        try:
            yield
        finally:
            self.ablations = None

    def forward_copies(self, batch, copies: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The scored logits of ``batch`` repeated ``copies`` times along its first dimension (copies that
        ``hooks.ablating_copies`` ablates each its own way), split into each copy's logits; and the
        labels, the same for every copy."""
        if copies == 1:
            logits, labels = self.logits_and_labels(batch)
            return [logits], labels
        many = {
            k: v.repeat(copies, *[1] * (v.dim() - 1)) if torch.is_tensor(v) and v.dim() else v for k, v in batch.items()
        }
        logits, labels = self.logits_and_labels(many)
        return list(logits.chunk(copies)), labels.chunk(copies)[0]

    settings: ModelSettings = ModelSettings()
    """Where the model came from, how its layout is found, how it is placed (``families.loading.settings``)."""

    def take_settings(self, values: dict) -> ModelSettings:
        """Keep the model settings ``values`` (from ``families.loading.settings.given``): grouped as
        ``settings``, and as given in ``setting_values`` (a run's config.yaml holds them)."""
        self.setting_values = dict(values)
        self.settings = ModelSettings.of(**values)
        return self.settings

    @classmethod
    def _wrapping(cls, model, name: str, values: dict):
        """An instance around ``model`` (already in memory: nothing is loaded), in eval mode, with the
        settings ``values`` of a ``from_model`` call; ``name`` stands for ``name_or_path`` in run folders
        and tables, and the dtype is the model's."""
        self = cls.__new__(cls)
        AblationModule.__init__(self)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.take_settings({"name_or_path": name, "dtype": dtype, **values})
        self.model = model.eval()
        return self

    def logits_and_labels(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Scored logits [N, n_classes] and labels [N] (-100 = not scored)."""
        raise NotImplementedError

    def example_forward(self, n: int) -> torch.Tensor:
        """The model's output on ``n`` small synthetic inputs (the hook points are checked on it)."""
        raise NotImplementedError

    check_hint = ""
    """Appended to the error of a failed check forward pass: what may settle it in this family."""

    def check_example(self, output: torch.Tensor) -> None:
        """Family-specific checks of ``example_forward``'s output (e.g. that a causal LM is causal)."""

    def locate_pre_outs(self, config, known: Architecture | None) -> None:
        """Find every layer's pre-out (``families.locate.layout``, as ``settings.layout`` says) and check it
        on one forward pass (``families.locate.trace``)."""
        layout = self.settings.layout
        pre_outs, self.layout_source = locate(
            self.model, config, known, layout.blocks, layout.out_proj, layout.head_dim
        )
        forward = lambda: self.example_forward(2)  # noqa: E731
        self.pre_outs, output, changed = trace(self.model, pre_outs, forward, 2, self.check_hint)
        self.check_changed = changed  # (the label of the check says on what it was earned)
        if changed:
            warn(
                None,
                f"the check forward pass changed the model ({', '.join(changed[:3])}"
                f"{', ...' if len(changed) > 3 else ''}); restored: the run scores the model as it was loaded",
            )
        check_unchecked(self.pre_outs, layout.allow_unchecked)
        self.check_example(output)
        self.hooks = PreOutHooks(self.pre_outs, self.model)
        self.site, self._config = "attn", config
        self._by_site = {"attn": (self.pre_outs, self.hooks)}
        names = {id(m): n for n, m in self.model.named_modules()}
        blocks = {names[id(p.block)] for p in self.pre_outs}
        self.unhooked = [
            path
            for path, _ in attention_modules(self.model)
            if not any(path == b or path.startswith(b + ".") for b in blocks)
        ]
        """Attention modules outside the ablated blocks (CaiT's class-attention blocks, a second tower)."""

    def select_site(self, site: str) -> None:
        """Hook the attention heads' output (``attn``) or the MLP hidden units (``mlp``: located in the
        blocks of the attention layers, ``families.locate.mlp``, and checked on one forward pass)."""
        if site not in self._by_site:
            from ablate_lit.families.locate.mlp import locate_mlp

            attention = self._by_site["attn"][0]
            found = locate_mlp(self.model, self._config, attention, self.settings.layout.mlp_proj)
            pre_outs, _, _ = trace(self.model, found, lambda: self.example_forward(2), 2, self.check_hint)
            self._by_site[site] = (pre_outs, PreOutHooks(pre_outs, self.model))
            self._by_site[site][1].home = getattr(self, "home", None)
        self.site = site
        self.pre_outs, self.hooks = self._by_site[site]

    def block_branches(self) -> list[list]:
        """Per block of the hooked layers, the modules whose outputs it adds to the residual stream: the
        attention out-projection and the MLP down-projection (located as for ``--ablation.site mlp``)."""
        site = self.site
        self.select_site("mlp")
        self.select_site(site)
        attention, mlp = self._by_site["attn"][0], self._by_site["mlp"][0]
        if any(p.shared for p in attention + mlp):
            raise AblateError(
                "GradDrop drops one block's gradient at a time, but this model shares its projections across "
                "layers; leave ⟨--ablation.attribution_graddrop false⟩"
            )
        return [[a.module, m.module] for a, m in zip(attention, mlp, strict=True)]

    def describe_pre_outs(self) -> str:
        """One line: how many layers and neurons are hooked, where, and how the place was found."""
        return describe(self.pre_outs, self.layout_source, self.unhooked, self.check_changed)

    def random_inputs(self, source: str, n: int, seed: int, data) -> Dataset:
        """``n`` randomised inputs from ``source``, shaped like ``data``'s evaluation inputs, with indices 0..n-1."""
        raise NotImplementedError

    def generation_steps(self, source: str, n: int, data) -> int:
        """Decode steps writing ``n`` rows of resample:``source`` takes (0: its inputs are not generated)."""
        return 0

    def time_decode_step(self, n: int) -> float | None:
        """Seconds of one decode step of ``n`` rows (None: this model generates no text)."""
        return None

    def data_connection(self) -> tuple:
        """What the DataModule's ``connect`` needs from the model (tokenizer; or preprocessing and classes)."""
        raise NotImplementedError

    def connect_data(self, data) -> None:
        """Check that ``data`` is this family's kind of DataModule and connect it to the model."""
        from ablate_lit.common.errors import AblateError

        kinds = FAMILIES[self.family].data
        if type(data).__name__ not in kinds:
            raise AblateError(
                f"{type(self).__name__} evaluates on {' or '.join(kinds)}, not {type(data).__name__}; "
                f"set --data ablate_lit.{kinds[0]}"
            )
        data.connect(*self.data_connection())

    @property
    def model_label(self) -> str:
        return str(self.settings.source.name_or_path).rstrip("/").split("/")[-1]

    def forward(self, batch):
        return self.logits_and_labels(batch)

    def _set_index(self, batch) -> None:
        self.hooks.sample_index = batch["index"]

    def configure_model(self) -> None:
        """Under ``--trainer.strategy fsdp2`` (a device mesh is set): shard each block, then the rest."""
        if device_mesh(self) is not None:
            blocks = list({id(p.block): p.block for p in self.pre_outs}.values())  # a shared block once
            if shard(self.model, blocks, device_mesh(self)):
                say(
                    self.trainer,
                    f"sharded: {len(blocks)} blocks and the rest of the model split over "
                    f"{self.trainer.world_size} processes (FSDP2)",
                )

    def _even_out(self, batch, batch_idx: int, n_batches: int, testing: bool = False) -> None:
        if self.trainer.world_size > 1 and is_sharded(self.trainer.strategy):
            pad_forwards(self, batch, batch_idx, n_batches, self._test_padding if testing else self._padding)

    def _padding(self, batch) -> None:
        """One calibration step's forward pass, hooks paused, results discarded."""
        with self.hooks.paused():
            self.logits_and_labels(batch)

    def _test_padding(self, batch) -> None:
        """The forward passes of one test step, results discarded."""
        if self.ablations is not None:
            self.ablations.step(batch, record=False)
            return
        with self.hooks.paused():
            twice = self.kl and self.hooks.active and self.scores.kept_reference() is None
            for _ in range(2 if twice else 1):
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

    def on_test_epoch_end(self) -> None:
        self.scores.end_epoch()

    def on_test_epoch_start(self) -> None:
        self.scores.reset()
        if self.ablations is not None:
            self.ablations.reset()

    def test_step(self, batch, batch_idx):
        self._set_index(batch)
        if self.ablations is not None:
            self.ablations.step(batch)
            self._even_out(batch, batch_idx, self.trainer.num_test_batches[0], testing=True)
            return
        reference = None
        if self.kl and self.hooks.active:
            reference = self.scores.kept_reference()  # a task's unablated answers, kept from the baseline
            if reference is None:
                with self.hooks.paused():
                    reference, _ = self.logits_and_labels(batch)
        logits, labels = self.logits_and_labels(batch)
        if self.kl and reference is None:
            reference = logits
        self.scores.score(batch, logits, labels, reference)
        self._even_out(batch, batch_idx, self.trainer.num_test_batches[0], testing=True)

    def fingerprint(self) -> str:
        """Identifies the weights cheaply: config, dtype and checksums of a few tensors. Computed once,
        on the first call (before any strategy wraps or shards the model), so every process agrees."""
        if getattr(self, "_fingerprint", None) is None:
            projections = [p.proj for p in self._by_site["attn"][0]]  # the same whatever site is hooked
            self._fingerprint = weights_fingerprint(self.model, projections)
        return self._fingerprint
