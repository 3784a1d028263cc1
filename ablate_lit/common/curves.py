"""The run's curves, figures and histograms, sent to the Lightning loggers chosen with ``--trainer.logger``.

Every logged value belongs to a *series*: one per (method, seed) (``mean_seed0``: the ablation curves,
x = % ablated, and optimal's fits), plus ``calibration`` (the neuron figures and histograms) and
``importance`` (a single-unit map). A TensorBoard logger gets one TensorBoard run per series (a
``TensorBoardLogger`` of its own under the logger's folder), so TensorBoard draws the methods of one
metric in one chart. Every other logger is one run (one W&B run, one MLflow run, one CSV file), and a
scalar's key ends with its series: ``ablation/ce/mean_seed0``, with the same step (% ablated).
Figures go to TensorBoard, W&B (``log_image``) and MLflow (artifacts); histograms to TensorBoard and
W&B. A CSV logger holds the scalars (the figures are PNGs in the run folder anyway).
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from ablate_lit.common.errors import AblateError, reason_of
from ablate_lit.common.logs import warn
from ablate_lit.common.paths import make_writable_folder
from ablate_lit.common.private import finish_wandb, mlflow_uri


def series_of(method: str, seed: int) -> str:
    """``resample-counterfactual_seed0``: a method's curves at one seed (no ':' in folder or key names)."""
    return f"{method.replace(':', '-')}_seed{seed}"


def chosen_loggers(trainer, run_dir: Path) -> list[Logger]:
    """The loggers a run writes to: the trainer's ``logger`` setting (``AblationTrainer.ablation_loggers``;
    null or true: TensorBoard in ``run_dir/tb``; false: none)."""
    chosen = getattr(trainer, "ablation_loggers", None)
    if chosen is None or chosen is True:
        return [TensorBoardLogger(save_dir=str(Path(run_dir) / "tb"), name="", version="", default_hp_metric=False)]
    if chosen is False:
        return []
    return list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]


class Series:
    """One series of every logger, with a TensorBoard ``SummaryWriter``'s three calls."""

    def __init__(self, curves: Curves, name: str):
        self.curves, self.name = curves, name

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for logger in self.curves.loggers:
            if isinstance(logger, TensorBoardLogger):
                self.curves.board(logger, self.name).log_metrics({tag: float(value)}, step)
            else:
                logger.log_metrics({f"{tag}/{self.name}": float(value)}, step)

    def add_figure(self, tag: str, fig, step: int = 0, close: bool = True) -> None:
        """``fig`` (matplotlib) as an image; closed afterwards unless ``close`` is false."""
        for logger in self.curves.loggers:
            if isinstance(logger, TensorBoardLogger):
                self.curves.board(logger, self.name).experiment.add_figure(tag, fig, step, close=False)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[fig], step=step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_figure(logger.run_id, fig, f"{tag}.png")
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)

    def add_histogram(self, tag: str, values, step: int = 0) -> None:
        for logger in self.curves.loggers:
            if isinstance(logger, TensorBoardLogger):
                self.curves.board(logger, self.name).experiment.add_histogram(tag, values, step)
            elif isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({tag: wandb.Histogram(values.detach().cpu().numpy())})

    def flush(self) -> None:
        self.curves.flush()


class Curves:
    """Where a run's curves go. Only process 0 logs (the other processes get no loggers)."""

    def __init__(self, loggers: list[Logger]):
        self.loggers = loggers
        self._boards: dict[tuple[int, str], TensorBoardLogger] = {}
        self._started = False

    @classmethod
    def of(cls, trainer, run_dir: Path) -> Curves:
        return cls(chosen_loggers(trainer, run_dir) if trainer.is_global_zero else [])

    def series(self, name: str) -> Series:
        return Series(self, name)

    def board(self, logger: TensorBoardLogger, series: str) -> TensorBoardLogger:
        """The TensorBoard run of ``series`` under ``logger``'s folder."""
        key = (id(logger), series)
        if key not in self._boards:
            self._boards[key] = TensorBoardLogger(
                save_dir=logger.log_dir, name="", version=series, default_hp_metric=False
            )
        return self._boards[key]

    def start(self, settings: dict) -> None:
        """The run's settings as the hyperparameters of each logger that keeps them (not TensorBoard:
        ``config.yaml`` sits beside its files)."""
        if self._started:
            return
        self._started = True
        for logger in self.loggers:
            try:  # the logger's first contact with its store (a folder, a W&B login, an MLflow server)
                if isinstance(logger, TensorBoardLogger):
                    make_writable_folder(logger.log_dir)
                    continue
                logger.log_hyperparams({k: v for k, v in settings.items() if v is not None})
            except Exception as exc:
                raise AblateError(
                    f"the {type(logger).__name__} of ⟨--trainer.logger⟩ could not start: {reason_of(exc)}; fix its "
                    "settings, or log to TensorBoard only (leave ⟨--trainer.logger⟩ unset)"
                ) from exc

    def flush(self) -> None:
        for board in self._boards.values():
            board.experiment.flush()
        for logger in self.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()

    def where(self) -> list[str]:
        """A line per logger saying where its curves are."""
        lines = []
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                lines.append(f"curves:  tensorboard --logdir {logger.log_dir.rstrip('/')}")
            elif isinstance(logger, WandbLogger):
                lines.append(f"curves:  W&B run {logger.experiment.id} ({logger.experiment.dir})")
            elif isinstance(logger, MLFlowLogger):
                lines.append(f"curves:  MLflow run {logger.run_id} ({mlflow_uri(logger)})")
            elif isinstance(logger, CSVLogger):
                lines.append(f"curves:  {Path(logger.log_dir) / 'metrics.csv'}")
            else:
                lines.append(f"curves:  {type(logger).__name__} {logger.name} {logger.version}")
        return lines

    def close(self, status: str = "success") -> None:
        """Flush and finalize every logger; a W&B run is finished (its logger would start a new one)."""
        for board in self._boards.values():
            board.experiment.close()
        self._boards.clear()
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                continue
            try:  # one logger failing to close neither stops the others nor hides the run's own error
                logger.finalize(status)
                if isinstance(logger, WandbLogger):
                    finish_wandb(logger, 0 if status == "success" else 1)
            except Exception as exc:
                warn(None, f"{type(logger).__name__} did not close cleanly ({reason_of(exc, 160)})")
