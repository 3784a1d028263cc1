"""The Trainer the CLI builds: Lightning's, with only the settings that matter for an ablation run.

An ablation run evaluates (``trainer.test``), calibrates (``trainer.validate``) and, for the
``optimal`` method, fits a table of constants (``trainer.fit``, with its own epochs and early
stopping). Training options such as ``max_epochs`` or gradient clipping would have no effect, so
``--trainer.*`` lists only where and how the model runs, and where its curves go (``logger``:
Lightning loggers, TensorBoard in the run folder by default; ``ablate_lit.common.curves``). Nothing is
checkpointed.
"""

from typing import Literal, Optional, Union  # no __future__ annotations: jsonargparse reads these types

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import Strategy

from ablate_lit.common.logs import lightning_bars

_PRECISION = Optional[
    Union[
        Literal[64, 32, 16],
        Literal[
            "16-true",
            "16-mixed",
            "bf16-true",
            "bf16-mixed",
            "32-true",
            "64-true",
            "transformer-engine",
            "transformer-engine-float16",
        ],
        Literal["64", "32", "16", "bf16"],
    ]
]


def check_devices(accelerator, devices) -> None:
    """Refuse several devices with ``accelerator: auto`` where no GPU is found: Lightning would start
    that many CPU processes without a word, which is rarely what ``--trainer.devices 2`` meant."""
    import torch

    from ablate_lit.common.errors import AblateError

    if str(accelerator) != "auto" or torch.cuda.is_available():
        return
    count = len(devices) if isinstance(devices, (list, tuple)) else devices
    try:
        count = int(count)
    except (TypeError, ValueError):
        return  # "auto": one device here
    if count > 1:
        raise AblateError(
            f"⟨--trainer.devices {devices}⟩ finds no GPU here, so it would start {count} CPU processes; pass "
            "⟨--trainer.accelerator cpu⟩ to run on CPU processes, or run where the GPUs are"
        )


class AblationTrainer(L.Trainer):
    def __init__(
        self,
        accelerator: str = "auto",
        strategy: Union[str, Strategy] = "auto",
        devices: Union[list[int], str, int] = "auto",
        num_nodes: int = 1,
        precision: _PRECISION = None,
        enable_progress_bar: Optional[bool] = None,
        callbacks: Optional[Union[list[Callback], Callback]] = None,
        deterministic: Optional[Union[bool, Literal["warn"]]] = None,
        benchmark: Optional[bool] = None,
        default_root_dir: Optional[str] = None,
        logger: Optional[Union[Logger, list[Logger], bool]] = None,
    ):
        """Where and how the model runs.

        Args:
            accelerator: cpu, gpu, cuda, mps, tpu or auto.
            strategy: auto, ddp (several GPUs or nodes, replicated weights), fsdp2 (weights sharded over the processes).
            devices: how many devices (or which: [0, 2]), or auto.
            num_nodes: machines, each with ``devices`` devices.
            precision: 32 (null: 32), bf16-mixed, 16-mixed (autocast), bf16-true, 16-true (weights cast).
            enable_progress_bar: Lightning's own progress bars (null: with --verbose).
            callbacks: extra Lightning callbacks.
            deterministic: use deterministic algorithms (true, false or warn).
            benchmark: cudnn.benchmark.
            default_root_dir: Lightning's own files (none are written by default).
            logger: where the curves, figures and histograms go: Lightning loggers (TensorBoardLogger,
                WandbLogger, MLFlowLogger, CSVLogger, ...), one or a list (null or true: TensorBoard in
                the run folder's tb/; false: none). Scalars have the % ablated as their step.
        """
        self.ablation_loggers = logger
        """The loggers the run's curves go to (``ablate_lit.common.curves``); Lightning's own logging is off."""
        super().__init__(
            accelerator=accelerator,
            strategy=strategy,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            enable_progress_bar=lightning_bars() if enable_progress_bar is None else enable_progress_bar,
            callbacks=callbacks,
            deterministic=deterministic,
            benchmark=benchmark,
            default_root_dir=default_root_dir,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )

    def test(self, model=None, dataloaders=None, ckpt_path=None, verbose=True, datamodule=None, weights_only=None):
        """Run an ablation experiment: calibrate, then score every method at every fraction and seed."""
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)
