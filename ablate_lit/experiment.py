"""One experiment: calibrate (or load cached statistics), then run the schedule point by point."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ablate_lit.ablation.hooks import folded
from ablate_lit.ablation.methods import parse_method
from ablate_lit.ablation.schedule import ablation_mask, neuron_order, plan
from ablate_lit.atomic import atomic_path
from ablate_lit.batch_size import find_batch_size
from ablate_lit.callbacks.calibration import CalibrationCallback
from ablate_lit.callbacks.results import ResultWriter, read_results
from ablate_lit.config import AblationConfig
from ablate_lit.data.sampler import make_loader
from ablate_lit.errors import AblateError
from ablate_lit.report import neuron_views, summary_table, write_summary
from ablate_lit.sharding import is_sharded

log = logging.getLogger("ablate_lit")


CACHE_FORMAT = 2  # bump when the content of cached statistics changes, so older caches are rebuilt


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _say(trainer, msg: str) -> None:
    if trainer.is_global_zero:
        print(msg, flush=True)


def _save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load(path: Path, key: str):
    """A cached object whose stored key matches, or None (missing, corrupt or made with other settings)."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or corrupt file is rebuilt, never used
        log.warning("calibration cache %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if not isinstance(obj, dict) or obj.get("key") != key:
        log.warning("calibration cache %s was made with other settings; rebuilding it", path)
        return None
    return obj


class Experiment:
    def __init__(self, trainer, module, data, cfg: AblationConfig, run_dir: Path, cache_dir: Path):
        self.trainer, self.module, self.data, self.cfg = trainer, module, data, cfg
        cfg.resolve_methods(module.resample_sources)
        self.run_dir, self.cache_dir = Path(run_dir), Path(cache_dir)
        self.methods = [parse_method(m) for m in cfg.methods]
        for m in self.methods:
            if m.source and m.source not in module.resample_sources:
                raise AblateError(f"resample source '{m.source}' does not apply to {module.family} models; "
                                  f"use one of: {', '.join('resample:' + s for s in module.resample_sources)}")
            if m.source and not all(p.batch_major for p in module.pre_outs):
                raise AblateError(f"{m.label} needs pre-outs laid out [batch, pos, width], but this model's attention folds "
                                  "windows into the batch (windowed attention); use zero, mean or peak")

    # -- calibration -----------------------------------------------------------------------------
    def _validate(self, callback: CalibrationCallback, loader: DataLoader) -> dict:
        self.trainer.callbacks.append(callback)
        try:
            self.trainer.validate(self.module, dataloaders=loader, verbose=False)
        finally:
            self.trainer.callbacks.remove(callback)
            self.module.hooks.remove()
        return callback.result

    def _calibration_key(self, *extra) -> dict:
        return {"format": CACHE_FORMAT, "model": self.module.fingerprint(), "precision": str(self.trainer.precision),
                "data": self.data.shape_key(), "extra": extra}

    def statistics(self) -> dict:
        cfg = self.cfg
        key = _hash(self._calibration_key("stats", self.data.fingerprint("calibration"), cfg.eps, cfg.n_bins, cfg.bin_alignment))
        path = self.cache_dir / f"stats-{key}.pt"
        stats = _load(path, key)
        if stats is not None:
            _say(self.trainer, f"calibration statistics: cached ({path})")
            return stats
        _say(self.trainer, f"calibration: {self.data.describe('calibration')}")
        callback = CalibrationCallback(cfg.eps, cfg.n_bins, cfg.bin_alignment)
        stats = self._validate(callback, self.data.val_dataloader())
        stats["key"] = key
        if self.trainer.is_global_zero:
            _save(stats, path)
        self._warn_outside_window(stats)
        return stats

    def _warn_outside_window(self, stats: dict) -> None:
        outside = stats["underflow"].long() + stats["overflow"].long()
        risky = int((outside > stats["peak_count"].long()).sum())
        if risky:
            _say(self.trainer, f"warning: {risky} neurons have more activations outside their histogram window than in "
                               f"their fullest bin; raise --ablation.n_bins (now {self.cfg.n_bins}) so their peaks are exact")

    def resample_cache(self, source: str) -> torch.Tensor:
        cfg, data, module = self.cfg, self.data, self.module
        key = _hash(self._calibration_key("resample", source, cfg.n_resample, cfg.resample_seed,
                                          module.hparams.get("generator")))
        path = self.cache_dir / f"resample-{source}-{key}.pt"
        cached = _load(path, key)
        if cached is not None:
            _say(self.trainer, f"resample cache {source}: cached ({path})")
            return cached["resample"]
        _say(self.trainer, f"resample cache {source}: {cfg.n_resample} random inputs")
        inputs = module.random_inputs(source, cfg.n_resample, cfg.resample_seed, data)
        callback = CalibrationCallback(cfg.eps, cfg.n_bins, cfg.bin_alignment)
        callback.sweep_resample(cfg.n_resample)
        result = self._validate(callback, make_loader(inputs, data.batch_size))
        if self.trainer.is_global_zero:
            _save({"key": key, "resample": result["resample"], "inputs": getattr(inputs, "windows", None)}, path)
        return result["resample"]

    # -- the schedule ------------------------------------------------------------------------------
    def replacement(self, method, stats: dict) -> dict:
        """The replacement values, on the CPU: each point moves them to the device for its duration,
        so a run with several resample sources holds one resample cache on the device at a time."""
        if method.name == "zero":
            return {"values": torch.zeros_like(stats["mean"], dtype=torch.float32)}
        if method.name == "mean":
            return {"values": stats["mean"].float()}
        if method.name == "peak":
            return {"values": stats["peak"].float()}
        return {"resample": self.resample_cache(method.source)}

    def _ablated(self, mask: torch.Tensor, replacement: dict):
        if self.cfg.mode == "fold" and "values" in replacement:
            return folded(self.module.pre_outs, mask, replacement["values"])
        return self.module.hooks.ablating(mask.to(self.module.device), **replacement)

    def run(self, writer: ResultWriter) -> list[dict]:
        trainer, module, cfg = self.trainer, self.module, self.cfg
        n_layers, width = module.hooks.n_layers, module.hooks.width
        points = plan(cfg.methods, cfg.seeds, cfg.fractions)
        todo = [p for p in points if not writer.done(p)]
        _say(trainer, f"schedule: {len(points)} evaluations ({len(points) - len(todo)} already in {writer.path}), "
                      f"each over {self.data.describe('evaluation')}")
        if not todo:
            return writer.rows
        stats = self.statistics()
        if cfg.log_histograms and trainer.is_global_zero:
            neuron_views(stats, self.run_dir)
        orders = {s: neuron_order(s, n_layers, width, cfg.selection) for s in cfg.seeds}
        replacements: dict = {}
        trainer.callbacks.append(writer)
        started = time.perf_counter()
        try:
            for i, point in enumerate(todo, 1):
                mask = ablation_mask(orders[point.seed], point.fraction, n_layers, width)
                writer.begin(point, int(mask.sum()), n_layers * width)
                if point.method == "baseline":
                    trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)
                else:
                    if point.method not in replacements:
                        replacements[point.method] = self.replacement(parse_method(point.method), stats)
                    with self._ablated(mask, {k: v.to(module.device) for k, v in replacements[point.method].items()}):
                        trainer.test(module, dataloaders=self.data.test_dataloader(), verbose=False)
                eta = (time.perf_counter() - started) / i * (len(todo) - i)
                _say(trainer, f"[{i}/{len(todo)}] {point.method:>24} seed {point.seed} {round(100 * point.fraction):3d}% ablated: "
                              f"top1 {writer.last['top1']:.4f}  ce {writer.last['ce']:.4f}  (eta {int(eta) // 60}:{int(eta) % 60:02d})")
        finally:
            trainer.callbacks.remove(writer)
            module.hooks.remove()
            writer.close()
        return writer.rows


def run_experiment(trainer, module, data, cfg: AblationConfig, name: str | None, root: str,
                   identity: dict, config_yaml: str) -> Path:
    """Everything ``python -m ablate_lit test`` does; returns the run folder."""
    if getattr(trainer.strategy, "_start_method", "popen") != "popen":
        raise AblateError("spawned processes cannot hand calibration statistics back; use --trainer.strategy ddp")
    sharded = is_sharded(trainer.strategy)
    if cfg.mode == "fold" and sharded:
        raise AblateError("--ablation.mode fold edits whole weight matrices, which a sharding strategy splits; use --ablation.mode hook")
    if cfg.mode == "fold" and not all(p.direct and not p.shared for p in module.pre_outs):
        why = "a norm sits between the heads and the out-projection" if not module.pre_outs[0].direct else "its layers share weights"
        raise AblateError(f"--ablation.mode fold edits each layer's out-projection, but in this model {why}; use --ablation.mode hook")
    tensor_parallel = getattr(trainer.strategy, "_tensor_parallel_size", 1)  # ModelParallelStrategy: "auto" = all processes
    if (trainer.world_size if tensor_parallel == "auto" else tensor_parallel) > 1:
        raise AblateError("tensor parallelism would split the attention heads across processes; "
                          "use --trainer.strategy fsdp2 (ModelParallelStrategy with tensor_parallel_size 1)")
    if data.batch_size == "auto" and sharded:
        raise AblateError("--data.batch_size auto probes the whole model on one device, which a sharding strategy avoids; "
                          "set --data.batch_size to a number")
    module.fingerprint()  # before any strategy wraps or shards the weights
    module.connect_data(data)
    data.setup("test")
    if data.batch_size == "auto":
        module.to(trainer.strategy.root_device)
        data.batch_size = find_batch_size(module, data.eval_dataset(), trainer.strategy.root_device.type)
        _say(trainer, f"batch size: {data.batch_size} (found automatically)")
    world = trainer.world_size
    if world > 1:
        n_calib, n_eval = len(data.val_dataloader().dataset), len(data.eval_dataset())
        if min(n_calib, n_eval, cfg.n_resample) < world:
            raise AblateError(f"{world} processes need at least {world} calibration and {world} evaluation windows/images "
                              f"and --ablation.n_resample >= {world} (have {n_calib}, {n_eval} and {cfg.n_resample})")
    label = module.model_label
    run_dir = Path(root) / (name or f"{label}-{_hash(identity)[:8]}")
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(root) / ".calibration_cache"
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
    _say(trainer, f"run folder: {run_dir}")
    _say(trainer, module.describe_pre_outs())
    fixed = {"model": label, "selection": cfg.selection, "eps": cfg.eps, "bin_alignment": cfg.bin_alignment,
             "precision": str(trainer.precision)}
    writer = ResultWriter(run_dir, fixed)
    Experiment(trainer, module, data, cfg, run_dir, cache_dir).run(writer)
    if trainer.is_global_zero:
        table = summary_table(read_results(writer.path), cfg.methods, cfg.fractions)
        write_summary(run_dir, table)
        print("\n" + table, flush=True)
        print(f"results: {writer.path}\ncurves:  tensorboard --logdir {run_dir / 'tb'}", flush=True)
    return run_dir
