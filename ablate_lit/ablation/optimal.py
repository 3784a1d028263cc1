"""Optimal ablation (Li & Janson, "Optimal ablation for interpretability", NeurIPS 2024): the
constants of a point's ablated neurons that minimise a loss of the ablated model: its cross-entropy
(``optimal``), or, as the paper defines it, its KL divergence from the unablated model
(``optimal:kl``: the deviation ΔKL at the scored positions, a task's answer positions). The constants
are one per neuron (a head's are its constant vector, with ``--ablation.unit head``), or with
``+position`` one per neuron and position, for fixed-template tasks (the paper's per-position OA).

They are fitted with Lightning's own ``fit`` loop on the run's trainer (its accelerator, precision
and processes): ``ConstantFit`` is a LightningModule whose only parameter is the ``[n_layers, width]``
table of constants, initialised at the calibration mean; the model stays frozen, in eval mode, and
is not part of the fitted module (Lightning neither moves nor wraps it). The ablation hook reads the
constants live, so the gradient of the CE reaches them. Training runs on calibration windows, never
on evaluated ones; a held-out part of the calibration windows is scored before training and after
every epoch, training stops early when it stops improving, and the constants with the lowest
held-out CE are kept (the mean, if nothing beat it). Curves go to TensorBoard beside the point's
ablation curve.
"""

from __future__ import annotations

import time

import lightning as L
import torch
from torch import nn

from ablate_lit.common import progress
from ablate_lit.common.private import fresh_fit_loop, parse_to, restore_fit_loop


class ConstantFit(L.LightningModule):
    """Trains the constants [n_layers, width] ``init + scale * shift``: ``shift`` is the parameter, in
    units of each neuron's calibration standard deviation ``scale``, so one learning rate suits
    neurons of every magnitude."""

    def __init__(
        self, target, init: torch.Tensor, scale: torch.Tensor, lr: float, writer=None, tag: str = "", objective="ce"
    ):
        super().__init__()
        self.objective = objective
        self.shift = nn.Parameter(torch.zeros_like(init, dtype=torch.float32))
        self.register_buffer("init", init.detach().float().clone())
        self.register_buffer("scale", scale.detach().float().clone())
        object.__setattr__(self, "target", target)  # not a child module: Lightning must not move, cast or wrap it
        self.lr, self.writer, self.tag = lr, writer, tag
        self.best: tuple[float, torch.Tensor] | None = None
        self.history: list[dict] = []
        self._sum = self._count = None
        self._step = 0

    # the constants stay float32 under a true half precision (they are the master copy; the hook casts
    # them to the activations' dtype)
    def to(self, *args, **kwargs):
        device = parse_to(*args, **kwargs)[0]
        return super().to(device) if device is not None else self

    def half(self):
        return self

    def bfloat16(self):
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.target.eval()  # no dropout: the constants are fitted to the model as it is evaluated
        return self

    def values(self, layer: int | None = None) -> torch.Tensor:
        """The constants [n_layers, (pos,) width], or one layer's (what the hook reads at each call)."""
        if layer is None:
            return self.init + self.scale * self.shift
        return self.init[layer] + self.scale[layer] * self.shift[layer]

    def configure_optimizers(self):
        return torch.optim.Adam([self.shift], lr=self.lr)

    def _loss_sum(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) minimised on ``batch``: the target's scores' CE or (``kl``) KL from the unablated
        model (a pass with the hooks paused), on what they score (tokens, or a task's answers)."""
        target, reference = self.target, None
        if self.objective == "kl":
            with torch.no_grad(), target.hooks.paused():
                reference, _ = target.logits_and_labels(batch)
        logits, labels = target.logits_and_labels(batch)
        return target.scores.objective(batch, logits, labels, reference)

    def training_step(self, batch, batch_idx):
        total, n = self._loss_sum(batch)
        loss = total / n.clamp_min(1)
        if self.writer is not None:
            self._step += 1
            self.writer.add_scalar(f"fit_{self.tag}/train_{self.objective}", float(loss.detach()), self._step)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch, batch_idx):
        total, n = self._loss_sum(batch)
        self._sum += total.double()
        self._count += n.double()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._count, reduce_op="sum")
        held_out = float(total / count.clamp_min(1))
        if self.trainer.sanity_checking:
            return
        self.log("held_out", held_out, sync_dist=False)  # already summed over processes
        epoch = len(self.history)  # 0: the initial constants (before training)
        self.history.append({"epoch": epoch, f"held_out_{self.objective}": held_out})
        if self.writer is not None:
            self.writer.add_scalar(f"fit_{self.tag}/held_out_{self.objective}", held_out, epoch)
        if self.best is None or held_out < self.best[0]:
            self.best = (held_out, self.values().detach().cpu().clone())
        if epoch:  # the epochs done count into the run's progress step (at most max_epochs; early stopping ends it)
            progress.RUN.tick(("fit",), epoch, self.trainer.max_epochs)


def fit_constants(
    trainer,
    target,
    mask: torch.Tensor,
    init: torch.Tensor,
    scale: torch.Tensor,
    train_loader,
    held_out_loader,
    *,
    lr: float,
    max_epochs: int,
    patience: int,
    writer=None,
    tag: str = "",
    objective: str = "ce",
) -> dict:
    """Fit the constants of the neurons where ``mask`` [n_layers, width] is True, starting at ``init``
    and moving in units of ``scale`` (both [n_layers, width], or [n_layers, pos, width] for one constant
    per position), with ``trainer.fit``, minimising ``objective`` (ce or kl). Returns ``values`` (``init``
    where ``mask`` is False, the held-out best where it is True), ``history`` (held-out loss per epoch,
    0 = ``init``), ``init_loss``, ``best_loss``, ``epochs`` and ``fit_s``."""
    from lightning.pytorch.callbacks import EarlyStopping

    started, fit = time.perf_counter(), ConstantFit(target, init, scale, lr, writer, tag, objective)
    stopper = EarlyStopping(monitor="held_out", mode="min", patience=patience, min_delta=0.0, check_finite=True)
    frozen = [(p, p.requires_grad) for p in target.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    saved = fresh_fit_loop(trainer, max_epochs)  # a fresh loop for every fit
    trainer.callbacks.append(stopper)
    try:
        # ("`Trainer.fit` stopped: ..." is Lightning's INFO line: shown with --verbose only, logs.lightning_voice)
        with target.hooks.ablating(mask, values=fit.values, device=target.device):
            trainer.validate(fit, dataloaders=held_out_loader, verbose=False)  # the initial constants' held-out CE
            trainer.fit(fit, train_dataloaders=train_loader, val_dataloaders=held_out_loader)
    finally:
        trainer.callbacks.remove(stopper)
        restore_fit_loop(trainer, saved)
        for p, flag in frozen:
            p.requires_grad_(flag)
        if writer is not None:
            writer.flush()
    best_loss, best = fit.best
    values = torch.where(mask if init.dim() == 2 else mask[:, None, :], best, init.float())
    return {
        "values": values,
        "history": fit.history,
        "init_loss": fit.history[0][f"held_out_{objective}"],
        "best_loss": best_loss,
        "epochs": len(fit.history) - 1,
        "fit_s": time.perf_counter() - started,
    }
