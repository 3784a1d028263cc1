"""A run's identity: everything its numbers depend on, one typed record (``RunIdentity``).

The identity names the run folder (``run_id``), is stored in its identity.json, is carried by every
row, and decides which rows count: a rerun with the same identity resumes, another one is refused.
It holds the model (the fingerprint of its weights and where its neurons are), the exact evaluation
and calibration inputs (content, not path), every setting that changes a number, and what is
ablated (``WHAT``: one model and data can have runs of each). Methods, fractions and seeds are not
in it: each row names its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ablate_lit.runner.config import AblationConfig
from ablate_lit.store.folder import digest, run_id_of

WHAT = ("site", "unit", "layers", "order", "selection", "pre_outs", "schedule", "task")
"""The identity's keys that say what is ablated (a row carries them; ``setup_id`` leaves them out)."""


@dataclass(frozen=True)
class RunIdentity:
    family: str
    model: str
    """The model's name in tables and run folders."""
    model_fingerprint: str
    pre_outs: str
    """A hash of where the hooked modules are."""
    eval_data: str
    calib_data: str
    """Hashes of the exact evaluation and calibration inputs."""
    precision: str
    eps: float
    n_bins: int
    bin_alignment: str
    selection: str
    n_resample: int
    resample_seed: int
    generator: str | None
    kl: bool
    optimal: dict = field(default_factory=dict)
    """optimal's fitting settings (lr, epochs, patience, held_out, batch_size)."""
    site: str = "attn"
    unit: str = "neuron"
    layers: str = "all"
    """The chosen layers: all, or their indices joined by ';'."""
    order: str = "random"
    schedule: str | None = None
    """each for a single-unit map; None (absent) for the nested schedule, whose identities predate it."""
    task: str | None = None
    """The task's name on task data; None (absent) otherwise."""

    @classmethod
    def of(cls, trainer, module, data, cfg: AblationConfig) -> RunIdentity:
        n = module.hooks.n_layers
        layers = "all" if cfg.layers is None else ";".join(str(i % n) for i in sorted({i % n for i in cfg.layers}))
        return cls(
            family=module.family,
            model=module.model_label,
            model_fingerprint=module.fingerprint(),
            pre_outs=digest([(p.name, p.width, p.application) for p in module.pre_outs]),
            eval_data=data.fingerprint("evaluation"),
            calib_data=data.fingerprint("calibration"),
            precision=str(trainer.precision),
            eps=cfg.eps,
            n_bins=cfg.n_bins,
            bin_alignment=cfg.bin_alignment,
            selection=cfg.selection,
            n_resample=cfg.n_resample,
            resample_seed=cfg.resample_seed,
            generator=module.settings.source.generator,
            kl=cfg.kl,
            optimal={
                "lr": cfg.optimal_lr,
                "epochs": cfg.optimal_epochs,
                "patience": cfg.optimal_patience,
                "held_out": cfg.optimal_held_out,
                "batch_size": cfg.optimal_batch_size,
            },
            site=cfg.site,
            unit=cfg.unit,
            layers=layers,
            order=cfg.order,
            schedule=None if cfg.schedule == "nested" else cfg.schedule,
            task=data.task.name if data.task is not None else None,
        )

    def as_dict(self) -> dict:
        """The identity as stored and hashed (``schedule`` and ``task`` only where they are set)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {k: v for k, v in out.items() if not (k in ("schedule", "task") and v is None)}

    @property
    def run_id(self) -> str:
        return run_id_of(self.as_dict())

    @property
    def what(self) -> dict:
        """What is ablated: the ``WHAT`` keys this identity has."""
        stored = self.as_dict()
        return {k: stored[k] for k in WHAT if k in stored}

    @property
    def setup_id(self) -> str:
        """The model, data and settings, whatever is ablated (runs of one setup are compared in a report)."""
        return digest({k: v for k, v in self.as_dict().items() if k not in WHAT})

    def row_columns(self, cfg: AblationConfig) -> dict:
        """The columns every row of this run carries (``store.rows.SCHEMA``), as stored."""
        return {
            "model": self.model,
            "selection": self.selection,
            "eps": self.eps,
            "bin_alignment": self.bin_alignment,
            "n_bins": self.n_bins,
            "n_resample": self.n_resample,
            "precision": self.precision,
            "mode": cfg.mode,
            **self.what,
            "model_id": self.model_fingerprint,
            "run_id": self.run_id,
            "setup_id": self.setup_id,
        }
