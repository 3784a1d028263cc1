"""The LightningModule logic of the text families: token windows, the tokenizer, the model's
positions, and the text resample sources (random characters, random tokens, generated text,
calibration windows)."""

from __future__ import annotations

import time

import torch

from ablate_lit.common.errors import AblateError
from ablate_lit.common.progress import GENERATION_BATCH
from ablate_lit.families.loading.causal_lm import load_causal_lm
from ablate_lit.families.loading.hf import PROBE, check_family, check_generator, heads_config
from ablate_lit.families.loading.settings import LAYOUT, Source, given, takes
from ablate_lit.families.module import AblationModule


class TextAblationModule(AblationModule):
    """Shared by the text families: token windows, and the three text resample sources."""

    architectures: dict = {}
    """model_type -> tested layout (the family's registry)."""

    @classmethod
    @takes("generator", *LAYOUT)
    def from_model(cls, model, tokenizer, name: str | None = None, **settings):
        """Wrap a Hugging Face model and tokenizer already in memory (fine-tuned, edited, never saved):
        the same checks as a loaded one (its family, where its neurons are, one forward pass). ``name``
        names it in run folders and tables (default: its config's ``name_or_path``, else its type)."""
        values = given(TextAblationModule.from_model.__func__, settings)
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "model_type"):
            raise AblateError(
                f"{cls.__name__}.from_model takes a Hugging Face model (with a .config), not a {type(model).__name__}"
            )
        if tokenizer is None or not callable(tokenizer):
            raise AblateError(f"{cls.__name__}.from_model needs the model's tokenizer (tokenizer=...)")
        check_family(config, cls.family)
        if values["generator"]:
            check_generator(values["generator"])
        label = name or str(getattr(config, "name_or_path", "") or "").rstrip("/") or config.model_type
        self = cls._wrapping(model, label, values)
        self.tokenizer = tokenizer
        self.locate_pre_outs(heads_config(config, cls.family), cls.architectures.get(config.model_type))
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
        if limit:
            data.check_positions(limit)

    def example_forward(self, n: int) -> torch.Tensor:
        """Logits on ``n`` copies of ``check_length`` (default 8) ordinary tokens; the copies differ only in
        their last token."""
        length = self.settings.layout.check_length or 8
        probe = self.tokenizer(PROBE * (2 + length // 4), add_special_tokens=False)["input_ids"]
        ids = torch.tensor(probe[:length]).repeat(n, 1)
        ids[1:, -1] = probe[length]
        return self.model(input_ids=ids.to(self.model.device), **self.forward_kwargs).logits

    check_hint = (
        "; a model that takes inputs of one length only needs that length: pass ⟨--model.check_length N⟩ "
        "and ⟨--data.context_length N⟩"
    )

    forward_kwargs: dict = {}
    """Keyword arguments of every forward pass of the model (causal LMs: no key/value cache)."""

    def default_generator(self):
        """(model, tokenizer) that writes the text for resample:generated when none is configured; None
        means the built-in English sample."""
        return None

    def generator(self):
        """(model, tokenizer) writing the text for resample:generated: ``--model.generator`` (loaded now,
        on this module's device), else ``default_generator()``."""
        if self.settings.source.generator:
            model, tokenizer, _ = load_causal_lm(Source(name_or_path=self.settings.source.generator))
            return model.to(self.device), tokenizer
        return self.default_generator()

    def random_inputs(self, source: str, n: int, seed: int, data):
        return data.random_inputs(source, n, seed, self.generator)

    def generation_steps(self, source: str, n: int, data) -> int:
        """Decode steps writing ``n`` rows of resample:``source`` takes (0: it writes none)."""
        own = not self.settings.source.generator
        if source != "generated" or (own and self.default_generator() is None):
            return 0
        return data.generation_steps(n, own)

    def time_decode_step(self, n: int) -> float | None:
        """Seconds of one decode step of ``n`` rows by the model under test when it writes the text itself
        (None for a generator loaded later: its steps are priced when they run)."""
        if self.settings.source.generator or self.default_generator() is None:
            return None
        ids = torch.zeros((min(n, GENERATION_BATCH), 1), dtype=torch.long, device=self.model.device)
        cuda = ids.device.type == "cuda"
        with torch.no_grad():
            self.model(input_ids=ids, **self.forward_kwargs)  # (the first call's one-off costs left out)
            if cuda:
                torch.cuda.synchronize(ids.device)
            started = time.perf_counter()
            self.model(input_ids=ids, **self.forward_kwargs)
            if cuda:
                torch.cuda.synchronize(ids.device)
        return time.perf_counter() - started
