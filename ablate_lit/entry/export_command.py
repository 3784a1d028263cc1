"""``python -m ablate_lit export RUN --method mean --fraction 0.5 --seed 0 --out DIR`` (and
``Results.export(...)``): one point of a finished run saved as a model (``runner.export``).

The run is rebuilt from its ``config.yaml`` (a CLI run's, or that of a ``run()`` given a model and
data by name) in one process, without loggers or a device map; its identity must equal the run's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ablate_lit.common.errors import AblateError


def rebuild(run_dir: Path):
    """(trainer, module, data, ablation settings) of the run in ``run_dir``, from its config.yaml."""
    from ablate_lit.common.logs import quiet_loading
    from ablate_lit.entry.lightning_cli import build_cli

    quiet_loading()
    config = Path(run_dir) / "config.yaml"
    try:
        loaded = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AblateError(f"'{run_dir}' has no readable config.yaml ({exc}); pass a run folder") from exc
    if not isinstance(loaded, dict) or "class_path" not in str(loaded.get("model")):
        raise AblateError(
            f"the run in '{run_dir}' was given its model or data in memory, so nothing on disk rebuilds it; export "
            "runs of the CLI, or of run() with the model and data by name or path"
        )
    overrides = ["--trainer.logger", "false", "--trainer.devices", "1", "--trainer.strategy", "auto"]
    # the whole model in one place (a device map never enters a run's identity; offloaded weights cannot be edited)
    overrides += ["--model.device_map", "null", "--model.offload_folder", "null"]
    overrides += ["--trainer.num_nodes", "1", "--root", str(Path(run_dir).parent), "--name", Path(run_dir).name]
    cli = build_cli(["--config", str(config), *overrides], run=False)
    return cli.trainer, cli.model, cli.datamodule, cli.config_init["ablation"]


def export(run_dir, method: str, fraction: float, seed: int, out) -> Path:
    from ablate_lit.runner.export import export_point
    from ablate_lit.store.folder import check_run_folder

    run_dir = Path(run_dir)
    _check_destination(Path(out))
    check_run_folder(run_dir)  # a folder with results, or a one-line error
    trainer, module, data, cfg = rebuild(run_dir)
    return export_point(trainer, module, data, cfg, run_dir, (method, fraction, seed), Path(out))


def _check_destination(out: Path) -> None:
    """``out`` is new or an empty folder in a folder this process can write, checked before the run is
    rebuilt; the partial folders that killed exports to it left behind (``.NAME.partial-PID``, their
    process gone) are removed."""
    import os
    import shutil

    from ablate_lit.store.atomic import pid_alive

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AblateError(
            f"⟨--out⟩ '{out}' exists and is not an empty folder; pass a new folder for the exported model"
        )
    parent = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists() and p != out.absolute())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise AblateError(f"⟨--out⟩ '{out}': '{parent}' cannot be written; pass a folder you can write")
    for partial in out.parent.glob(f".{out.name}.partial-*") if out.parent.is_dir() else ():
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m ablate_lit export",
        description="Save one point of a finished run as a model: its ablated neurons' constants folded into "
        "the out-projections (zeroed input columns, bias += W c), loadable with plain from_pretrained or timm.",
    )
    ap.add_argument("run", help="the run folder (lightning_logs/<run>)")
    ap.add_argument("--method", required=True, help="a constant method of the run: zero, mean, peak, optimal, ...")
    ap.add_argument("--fraction", type=float, required=True, help="the share ablated, e.g. 0.5")
    ap.add_argument("--seed", type=int, default=0, help="whose neuron set (default 0)")
    ap.add_argument("--out", required=True, help="a new folder for the model")
    args = ap.parse_args(argv)
    export(args.run, args.method, args.fraction, args.seed, args.out)
