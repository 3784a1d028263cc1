"""One run folder: checks, the run's identity and store, the experiment, the summary table.

``python -m ablate_lit test`` ends here after LightningCLI has built the trainer, the model and the
data; the folder's identity (``runner.identity.RunIdentity``) decides where results go and which
ones count.
"""

from __future__ import annotations

from pathlib import Path

from ablate_lit.ablation.fold import why_not_foldable
from ablate_lit.common import progress
from ablate_lit.common.curves import Curves
from ablate_lit.common.errors import AblateError
from ablate_lit.common.logs import say
from ablate_lit.common.private import start_method, tensor_parallel_size
from ablate_lit.common.sharding import is_sharded
from ablate_lit.common.signals import stopped_by_signals
from ablate_lit.families.loading.quantization import check_placement
from ablate_lit.report.importance import write_importance
from ablate_lit.report.neurons import neuron_views
from ablate_lit.report.summary import summary_table, write_summary
from ablate_lit.runner import attribution
from ablate_lit.runner.batch_size import find_batch_size, find_per_pass
from ablate_lit.runner.config import AblationConfig, resolve_for
from ablate_lit.runner.experiment import Experiment
from ablate_lit.runner.identity import RunIdentity
from ablate_lit.runner.parts import Parts, build_parts
from ablate_lit.runner.writer import ResultWriter
from ablate_lit.stats.task_metrics import TaskScores
from ablate_lit.stats.token_metrics import TokenScores
from ablate_lit.store.atomic import clear_stale, write_text
from ablate_lit.store.folder import ResultStore, with_family


def check_destination(name: str | None, root, cache_dir=None) -> None:
    """Where results go: ``name`` a plain folder name, ``root`` and ``cache_dir`` writable folders."""
    from ablate_lit.store.atomic import check_folder

    if name is not None and (
        not isinstance(name, str)
        or not name.strip()
        or Path(name).name != name
        or name in (".", "..")
        or not name.isprintable()
        or len(name.encode()) > 200
    ):
        raise AblateError(
            f"⟨--name⟩ {name!r} must be a plain folder name inside ⟨--root⟩ (printable, at most 200 bytes, "
            "no '/', not '..'); use ⟨--root⟩ to choose where run folders go"
        )
    check_folder(root, "⟨--root⟩")
    if cache_dir:
        check_folder(cache_dir, "⟨--ablation.cache_dir⟩")


def run_experiment(trainer, module, data, cfg: AblationConfig, name: str | None, root: str, config_yaml: str) -> Path:
    """Everything ``python -m ablate_lit test`` does; returns the run folder. The model moves to its
    device once and stays there for calibration, every resample cache and every point."""
    check_strategy(trainer, module, data, cfg)
    with module.kept_in_place():
        return _run(trainer, module, data, cfg, name, root, config_yaml)


def check_strategy(trainer, module, data, cfg: AblationConfig) -> None:
    """Settings that cannot work together, refused before anything runs."""
    if start_method(trainer.strategy) != "popen":
        raise AblateError("spawned processes cannot hand calibration statistics back; use ⟨--trainer.strategy ddp⟩")
    sharded = is_sharded(trainer.strategy)
    check_placement(trainer, module, sharded)
    if cfg.mode == "fold" and (why := why_not_foldable(module.pre_outs)):
        raise AblateError(
            f"⟨--ablation.mode⟩ fold edits each layer's out-projection, but in this model {why}; use "
            "⟨--ablation.mode hook⟩"
        )
    if cfg.mode == "fold" and module.self_placed:
        raise AblateError(
            "⟨--ablation.mode⟩ fold edits weights in place, which a device map may keep offloaded; use "
            "⟨--ablation.mode hook⟩"
        )
    if cfg.mode == "fold" and sharded:
        raise AblateError(
            "⟨--ablation.mode⟩ fold edits whole weight matrices, which a sharding strategy splits; "
            "use ⟨--ablation.mode hook⟩"
        )
    tensor_parallel = tensor_parallel_size(trainer.strategy)  # ModelParallelStrategy: "auto" = all processes
    if (trainer.world_size if tensor_parallel == "auto" else tensor_parallel) > 1:
        raise AblateError(
            "tensor parallelism would split the attention heads across processes; "
            "use ⟨--trainer.strategy fsdp2⟩ (ModelParallelStrategy with tensor_parallel_size 1)"
        )
    if data.batch_size == "auto" and sharded:
        raise AblateError(
            "⟨--data.batch_size⟩ auto probes the whole model on one device, which a sharding strategy avoids; "
            "set ⟨--data.batch_size⟩ to a number"
        )


def prepare(trainer, module, data, cfg: AblationConfig) -> None:
    """The module hooked at its site and joined to its data, the data split, the scores chosen."""
    module.select_site(cfg.site)
    module.fingerprint()  # before any strategy wraps or shards the weights
    module.connect_data(data)
    data.setup("test")
    task = data.task  # a task scores its answers; other data every token (or image), per window too
    scores = TaskScores(task.n_rows, task.n_sequences, task.longest) if task else TokenScores(len(data.eval_dataset()))
    module.evaluate_with(scores, cfg.kl or (task is not None and cfg.mode == "hook"))  # a task's rows: KL (not fold)
    device = trainer.strategy.root_device
    if data.batch_size == "auto":
        module.to(device)
        data.batch_size = find_batch_size(module, data.eval_dataset(), device.type)
        say(trainer, f"batch size: {data.batch_size} (found automatically)")


def _run(trainer, module, data, cfg: AblationConfig, name: str | None, root: str, config_yaml: str) -> Path:
    prepare(trainer, module, data, cfg)
    world = trainer.world_size
    if world > 1:
        n_calib, n_eval = len(data.val_dataloader().dataset), len(data.eval_dataset())
        if min(n_calib, n_eval, cfg.n_resample) < world:
            raise AblateError(
                f"{world} processes need at least {world} calibration and {world} evaluation windows/images "
                f"and ⟨--ablation.n_resample⟩ >= {world} (have {n_calib}, {n_eval} and {cfg.n_resample})"
            )
    layers = resolve_for(cfg, module, trainer)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else Path(root) / ".calibration_cache"
    identity = RunIdentity.of(trainer, module, data, cfg)
    run_dir = Path(root) / (name or f"{identity.model}-{identity.run_id[:8]}")
    curves = Curves.of(trainer, run_dir)  # (no logger is contacted before ``curves.start``)
    parts = build_parts(trainer, module, data, cfg, layers, cache_dir, curves)  # every method checked
    parts.calibration.check_statistics_fit(trainer.strategy.root_device)  # before a run folder is made
    store = ResultStore(run_dir, identity.as_dict())
    store.open()
    if trainer.is_global_zero:
        store.clear_stale()
        clear_stale(cache_dir)
        write_text(run_dir / "config.yaml", config_yaml)
    say(trainer, f"run folder: {run_dir}")
    say(trainer, module.describe_pre_outs())
    fixed = identity.row_columns(cfg)
    experiment = Experiment(
        trainer,
        module,
        data,
        parts.values,
        parts.sets,
        parts.units,
        cfg.mode == "fold",
        per_pass(trainer, module, data, cfg),
    )
    _evaluate_all(trainer, experiment, parts, store, fixed, cfg, curves)
    return run_dir


def per_pass(trainer, module, data, cfg: AblationConfig) -> int:
    """The ablations per forward pass (``--ablation.ablations_per_pass``; auto: found from the GPU's memory)."""
    setting = 1 if cfg.mode == "fold" else cfg.ablations_per_pass
    device = trainer.strategy.root_device
    if setting == "auto" and device.type == "cuda":
        module.to(device)
    found = find_per_pass(module, data.eval_dataset(), data.batch_size, device.type, setting)
    if setting == "auto" and device.type == "cuda":
        say(trainer, f"ablations per pass: {found} (found from the GPU's free memory)")
    return found


def _evaluate_all(
    trainer, experiment: Experiment, parts: Parts, store: ResultStore, fixed: dict, cfg: AblationConfig, curves: Curves
) -> None:
    """The calibration statistics (where a point needs them) and their neuron figures, every point, then
    the summary table; the curves go to the trainer's loggers (``common.curves``), finalized as failed
    if the run stops early."""
    settings = {"methods": ",".join(cfg.methods), "seeds": ",".join(map(str, cfg.seeds)), "run": str(store.run_dir)}
    status = "failed"
    try:
        curves.start({**fixed, **settings})
        writer = ResultWriter(store, fixed, curves)
        with stopped_by_signals(lambda: f"{experiment.done} of {experiment.total} evaluations done (in {store.csv})"):
            sums = None
            if cfg.schedule != "attribution":
                points = experiment.points(cfg.methods, cfg.seeds, cfg.fractions)
            else:
                if any(m.reads_statistics for m in parts.methods.values()):
                    _calibrate(trainer, parts.calibration, store.run_dir, curves, cfg.log_histograms, fixed["model"])
                module = experiment.module
                sums = attribution.sweep(trainer, module, experiment.data, parts, cfg, store.run_dir, store.run_id)
                points = attribution.checks(module, cfg, parts, sums)
            todo = experiment.start(points, writer)
            plan_steps(experiment, parts, cfg, todo, store.run_dir)
            if experiment.reads_statistics(todo):
                _calibrate(trainer, parts.calibration, store.run_dir, curves, cfg.log_histograms, fixed["model"])
                time_generation(trainer, experiment.module, cfg)  # (now on its device, if it was not before)
            if cfg.schedule == "nested" and todo:
                parts.sets.prepare(cfg.seeds)  # (an order by estimated harm sweeps the calibration inputs)
            experiment.run(todo, writer)
        if trainer.is_global_zero:
            rows = with_family(store.write_csv(), store.run_dir)
            table = _unit_map_summary(store, fixed["model"], curves) if cfg.schedule == "each" else None
            if sums is not None:
                table = attribution.summary(experiment.module, cfg, parts, sums, store, fixed["model"], curves)
            table = table or summary_table(rows, cfg.methods, cfg.fractions)
            write_summary(store.run_dir, table)
            say(trainer, "\n" + table)
            say(trainer, "\n".join([f"results: {store.csv}", *curves.where()]))
        status = "success"
    finally:
        progress.RUN.close()
        curves.close(status)


NEURON_FIGURES = "neuron figures"
"""The step writing neurons.csv, the neuron figures and histograms (``report.neurons``)."""


def plan_steps(experiment: Experiment, parts: Parts, cfg: AblationConfig, todo: list, run_dir: Path) -> None:
    """Every step ahead of the run, in order, for its progress display and ETA (``common.progress``): the
    calibration sweep and neuron figures where needed, each method's one-off steps (resample caches,
    fits), every evaluation; and a decode step timed where text is to be generated."""
    works = []
    if experiment.reads_statistics(todo):
        works += parts.calibration.statistics_work()
        if cfg.log_histograms and not (run_dir / "neurons" / "atypical.png").exists():
            layers = experiment.module.hooks.n_layers + progress.FIGURES_FIXED_LAYERS
            works.append(progress.Work(NEURON_FIGURES, "figures", layers))
    evaluated = [e for p in todo for e in getattr(p, "entries", (p,))]
    for label, method in parts.methods.items():
        works += method.work(parts.context, [p for p in evaluated if p.method == label])
    works += [experiment.work(p) for p in todo]
    progress.RUN.plan(works)
    time_generation(experiment.trainer, experiment.module, cfg)


def time_generation(trainer, module, cfg: AblationConfig) -> None:
    """Where text is still to be generated (resample:generated), time one decode step on the device the
    run uses, once: what prices the generation in the ETA before it runs (until then, and where the model
    is not on that device yet, ``progress.Rates`` stands in)."""
    run = progress.RUN
    if "generate" in run.rates.measured or not any(w.kind == "generate" for w in run.ahead):
        return
    if module.device != trainer.strategy.root_device:  # (Lightning places it at its first loop)
        return
    if (seconds := module.time_decode_step(cfg.n_resample)) is not None:
        run.rates.probe("generate", seconds)


def _calibrate(trainer, calibration, run_dir: Path, curves: Curves, figures: bool, model: str = "") -> None:
    """The calibration statistics (computed once, or loaded), then neurons.csv and the neuron figures
    and histograms (``report.neurons``), when ``figures``."""
    stats = calibration.statistics()
    if figures and trainer.is_global_zero and not (run_dir / "neurons" / "atypical.png").exists():
        layers = stats.mean.shape[0] + progress.FIGURES_FIXED_LAYERS
        detail = "neurons.csv, the neuron figures and histograms"
        with progress.step(NEURON_FIGURES, "figures", layers, trainer=trainer, detail=detail):
            neuron_views(stats, run_dir, curves.series("calibration"), model=model)


def _unit_map_summary(store: ResultStore, model: str, curves: Curves) -> str:
    """A single-unit run's outputs (importance.csv, agreement.csv, importance.md, the heatmaps, also in
    the loggers' ``importance`` series: TensorBoard's tb/importance by default); returns its tables."""
    writer = curves.series("importance")
    markdown, _ = write_importance(with_family(store.read(windows=True), store.run_dir), store.run_dir, model, writer)
    writer.flush()
    return markdown
