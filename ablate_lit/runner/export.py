"""One point of a finished run as a model: its neuron set and constants folded into the out-projections.

The run is rebuilt from its folder (``entry.export_command``) and must have the identity its rows
were stored under, so the neuron set (from the seed) and the constants (from the calibration cache,
or optimal's cached fit) are the ones the row was measured with. ``ablation.json`` beside the model
records what was ablated.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ablate_lit.ablation.fold import fold_into, why_not_foldable
from ablate_lit.ablation.methods import parse_method
from ablate_lit.common.errors import AblateError, reason_of
from ablate_lit.common.labels import Point
from ablate_lit.common.logs import say
from ablate_lit.families.saving import NO_HEAD_PRUNING, save_ablated
from ablate_lit.runner.config import AblationConfig, resolve_for
from ablate_lit.runner.identity import RunIdentity
from ablate_lit.runner.launch import prepare
from ablate_lit.runner.parts import build_parts
from ablate_lit.store.atomic import write_text
from ablate_lit.store.folder import read_rows
from ablate_lit.store.rows import ResultRow


def the_row(run_dir: Path, method: str, fraction: float, seed: int) -> ResultRow:
    """The run's row for (method, fraction, seed), or a one-line error listing what the run holds."""
    stored = read_rows(run_dir)[0]
    units = sorted({r.target for r in stored if r.is_unit})
    if units and method != "baseline":
        listed = ", ".join(units[:3]) + (", ..." if len(units) > 3 else "")
        raise AblateError(
            f"'{run_dir}' is a single-unit map: each row ablates one unit ({listed}), and export saves a point "
            "of a nested run (⟨--method⟩, ⟨--fraction⟩, ⟨--seed⟩); export from a run of ⟨--ablation.schedule nested⟩"
        )
    rows = [r for r in stored if not r.is_unit]
    for r in rows:
        if r.method == method and r.seed == seed and abs(r.fraction - fraction) < 1e-9:
            return r
    have = sorted({(r.method, r.fraction, r.seed) for r in rows})
    listed = ", ".join(f"{m} {f:g} seed {s}" for m, f, s in have[:8]) + (" ..." if len(have) > 8 else "")
    raise AblateError(
        f"'{run_dir}' has no row for {method} at fraction {fraction:g}, seed {seed}; choose one of its points "
        f"(⟨--method⟩, ⟨--fraction⟩, ⟨--seed⟩): {listed or 'none (a single-unit map cannot be exported)'}"
    )


def export_point(trainer, module, data, cfg: AblationConfig, run_dir: Path, point: tuple, out: Path) -> Path:
    """Write the model of ``point`` = (method, fraction, seed) of the run in ``run_dir`` to ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    method, fraction, seed = point
    row = the_row(run_dir, method, fraction, seed)
    parsed = parse_method(method)
    if not parsed.constant:
        raise AblateError(
            f"{method} replaces each input's neurons with values of other inputs, which no weight can hold; "
            "export a constant method (zero, mean, median, peak, optimal)"
        )
    if why := why_not_foldable(module.pre_outs):
        raise AblateError(
            f"export folds the constants into each layer's out-projection, but in this model {why}; its "
            "ablations exist only as hooks"
        )
    with module.kept_in_place():
        prepare(trainer, module, data, cfg)
        if RunIdentity.of(trainer, module, data, cfg).run_id != row.run_id:
            raise AblateError(
                f"rebuilt from '{run_dir}', the model, data or settings differ from those its rows were measured "
                "with (another model folder or data file under the same name?); export where the run ran"
            )
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir.parent / ".calibration_cache"
        parts = build_parts(trainer, module, data, cfg, resolve_for(cfg, module, trainer), cache_dir)
        label = parsed.label
        at = Point(fraction, label, seed, ((label, seed),))
        if fraction > 0:
            mask = parts.sets.mask(seed, fraction)
            values = parts.values.of(at, mask, module.device)["values"]
        else:
            mask = torch.zeros(module.hooks.n_layers, module.hooks.width, dtype=bool)
            values = torch.zeros(mask.shape)
    new_bias = fold_into(module.pre_outs, mask, values)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")  # renamed to ``out`` once complete
    try:
        saved = save_ablated(module, partial, new_bias, cfg.site)
        record = _record(module, run_dir, row, mask, values, saved, new_bias)
        write_text(partial / "ablation.json", json.dumps(record, indent=1))
        try:
            if out.is_dir():
                out.rmdir()  # (empty: checked before the run was rebuilt)
            os.replace(partial, out)
        except OSError as exc:  # another export wrote ``out`` meanwhile (non-empty), or it cannot be written
            raise AblateError(
                f"⟨--out⟩ '{out}' could not take the exported model ({reason_of(exc)}: another export may have "
                "written it meanwhile); pass a new folder"
            ) from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    say(trainer, f"exported {method} {fraction:g} (seed {seed}) of {run_dir} to {out}: {saved['format']}")
    return out


def _record(module, run_dir: Path, row: ResultRow, mask, values, saved: dict, new_bias: list[int]) -> dict:
    head = module.pre_outs[0].head_dim
    per_head = mask.reshape(mask.shape[0], -1, head).all(-1)  # [n_layers, n_heads]: heads ablated whole
    return {
        "run": str(run_dir),
        **{k: row[k] for k in ("model", "method", "seed", "fraction", "run_id", "model_id", "site", "unit", "mode")},
        "row": {k: row[k] for k in ("top1", "ce", "kl", "n_tokens")},
        "n_ablated": int(mask.sum()),
        "projections": [p.name for p in module.pre_outs],
        "ablated": {str(p.layer): mask[p.layer].nonzero().squeeze(1).tolist() for p in module.pre_outs},
        "constants": {str(p.layer): values[p.layer][mask[p.layer].cpu()].tolist() for p in module.pre_outs},
        "whole_heads": {str(i): h.nonzero().squeeze(1).tolist() for i, h in enumerate(per_head) if h.any()},
        "heads_removed": False,
        "how": NO_HEAD_PRUNING,
        "biases_added": new_bias,
        **saved,
    }
