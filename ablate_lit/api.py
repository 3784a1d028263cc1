"""The Python entry point: ``ablate_lit.run(...)`` and ``ablate_lit.load(run_dir)``, for notebooks and scripts.

``run`` takes what the CLI takes (model, data and ablation settings as keyword arguments), and also
objects already in memory: a Hugging Face model with its tokenizer, a timm or Hugging Face image
classifier with its preprocessing, texts as a list of strings, a ``datasets.Dataset`` or a
DataLoader of token windows. It runs the same experiment as ``python -m ablate_lit test`` (the same
run folder, identity, resuming and caches) and returns a ``Results``. Errors raise ``AblateError``
(one line naming the fix); nothing exits the interpreter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
from pathlib import Path

from ablate_lit.errors import AblateError

FAMILIES = ("causal_lm", "masked_lm", "vision")


class Results:
    """A run folder's results: ``table()`` (a pandas DataFrame, one row per method, seed and fraction),
    ``summary()`` (Table 2 layout, Markdown), ``figure()`` (Top1 and CE against % ablated, a matplotlib
    Figure), ``statistics`` (per-neuron calibration statistics, a DataFrame) and ``run_dir``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "points").is_dir() and not (self.run_dir / "results.csv").is_file():
            raise AblateError(f"'{run_dir}' holds no results; pass a run folder such as lightning_logs/<run>")

    def rows(self) -> list[dict]:
        """The run's valid result rows, as stored (strings); malformed rows are left out."""
        from ablate_lit.store import read_rows

        return read_rows(self.run_dir)[0]

    def table(self):
        """One row per (method, seed, fraction): top1 (a fraction in [0, 1]), ce (nats per scored token
        or image), ppl, kl, n_tokens, ... as numbers, sorted by method, seed and fraction."""
        import pandas as pd

        df = pd.DataFrame(self.rows())
        if df.empty:
            return df
        for col in df.columns:
            if col in ("method", "model", "evaluated_as", "precision", "mode", "site", "unit", "layers", "order",
                       "selection", "bin_alignment") or col.endswith("_id"):
                continue
            converted = pd.to_numeric(df[col].replace("-", float("nan")), errors="coerce")
            if converted.notna().sum() == df[col].ne("-").sum():
                df[col] = converted
        return df.sort_values(["method", "seed", "fraction"], kind="stable").reset_index(drop=True)

    def summary(self, fractions: list[float] | None = None) -> str:
        """Baseline, then mean ± std over seeds per method and fraction (Top1 in %, CE), in Markdown."""
        from ablate_lit.report import summary_table

        from ablate_lit.ablation.methods import METHODS

        rows = self.rows()
        order = list(METHODS)
        methods = sorted(dict.fromkeys(r["method"] for r in rows),  # the registry's order: zero, mean, ..., resample
                         key=lambda m: (order.index(m.split(":")[0]) if m.split(":")[0] in order else len(order), m))
        if fractions is None:
            fractions = sorted({float(r["fraction"]) for r in rows})
        return summary_table(rows, methods, fractions)

    def figure(self):
        """Top1 (%) and CE against the percentage ablated: a line per method, ± one std over seeds,
        the unablated model dashed, seeds and scored tokens in the title."""
        from ablate_lit.report_cli import method_label, model_figure

        rows = [{**r, "method": method_label(r)} for r in self.rows()]
        if not rows:
            raise AblateError(f"'{self.run_dir}' holds no results yet")
        return model_figure(rows, rows[0]["model"])

    @property
    def statistics(self):
        """Per-neuron calibration statistics (layer, neuron, mean, peak, std, skew, ...), from neurons.csv."""
        import pandas as pd

        path = self.run_dir / "neurons.csv"
        if not path.is_file():
            raise AblateError(f"'{self.run_dir}' has no neurons.csv (the run had log_histograms=False or no method "
                              "needed calibration); rerun with log_histograms=True")
        return pd.read_csv(path)

    def __repr__(self) -> str:
        return f"Results('{self.run_dir}': {len(self.rows())} rows)"


def load(run_dir: str | Path) -> Results:
    """Reopen a finished (or partly finished) run folder."""
    return Results(run_dir)


def _family(model, family: str | None) -> str:
    if family is not None:
        if family not in FAMILIES:
            raise AblateError(f"unknown family '{family}'; use one of: {', '.join(FAMILIES)}")
        return family
    if isinstance(model, (str, Path)):
        from ablate_lit.families.vision import _backend

        text = str(model)
        try:
            import transformers

            config = transformers.AutoConfig.from_pretrained(text)
        except Exception:  # a timm name or folder, or a hub id out of reach: decided below
            config = None
        if config is None:
            return "vision" if _backend(text) == "timm" and not Path(text).expanduser().is_dir() or \
                (Path(text).expanduser() / "config.json").is_file() else "causal_lm"
        names = " ".join(getattr(config, "architectures", None) or [])
    else:
        if hasattr(model, "pretrained_cfg") or not hasattr(model, "config"):
            return "vision"
        names = type(model).__name__
    if "MaskedLM" in names:
        return "masked_lm"
    if "ImageClassification" in names:
        return "vision"
    return "causal_lm"


def _parameters(obj) -> set[str]:
    """Keyword parameters of a class's constructor or of a function."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    return {n for n in inspect.signature(fn).parameters if n not in ("self", "cls", "path")}


def run(model, data, *, tokenizer=None, preprocess=None, family: str | None = None, name: str | None = None,
        root: str | Path = "lightning_logs", trainer=None, verbose: bool = True, **settings) -> Results:
    """Ablate ``model``'s attention neurons (or MLP units, heads, ...) on ``data`` and return the results.

    Args:
        model: a hub id or local folder (as the CLI's ``--model.name_or_path``), or a model in memory: a
            Hugging Face causal or masked LM (pass ``tokenizer``), or a timm / Hugging Face image
            classifier (pass ``preprocess`` for a Hugging Face one).
        data: a hub data set or local file/folder (as ``--data.path``), a list of strings, a
            ``datasets.Dataset`` (text in ``text_column``; images in ``image_column`` with labels in
            ``label_column``), a list of {image, label} rows, or a DataLoader of token windows
            (``input_ids`` [batch, context_length], causal LMs; used as they are, no BOS added).
        family: causal_lm, masked_lm or vision (default: read from the model).
        name, root: the run folder ``root/name`` (default name: the model and a hash of the settings).
        trainer: a ``lightning.Trainer``, or a dict of Trainer settings (default: one device, no logger).
        verbose: print progress and the summary table (as the CLI does).
        **settings: any ablation setting (methods, fractions, seeds, eps, site, unit, layers, order,
            kl, optimal_*, ...), data setting (max_tokens, calib_tokens, context_length, batch_size,
            mask_prob, max_images, calib_images, text_column, dataset_name for a hub data set's
            configuration, ...) and model setting (by name: dtype, gguf_file, generator, blocks, out_proj,
            ...; in memory: model_name naming it in tables, generator, blocks, out_proj, mlp_proj), as in
            the CLI's config.
    """
    import lightning as L

    from ablate_lit import CausalLMAblation, ImageData, MaskedLMAblation, MaskedTextData, TextData, VisionAblation
    from ablate_lit.cli import _quiet_loading
    from ablate_lit.config import AblationConfig
    from ablate_lit.runs import run_experiment

    _quiet_loading()
    family = _family(model, family)
    module_cls = {"causal_lm": CausalLMAblation, "masked_lm": MaskedLMAblation, "vision": VisionAblation}[family]
    data_cls = {"causal_lm": TextData, "masked_lm": MaskedTextData, "vision": ImageData}[family]
    in_memory = not isinstance(model, (str, Path))
    model_keys = (_parameters(module_cls.from_model) - {"model", "tokenizer", "preprocess", "name"} | {"model_name"}
                  if in_memory else _parameters(module_cls) - {"name_or_path"})
    data_keys = (_parameters(data_cls) | (_parameters(TextData) if data_cls is MaskedTextData else set())) - {"name"}
    data_keys.add("dataset_name")  # the data class's ``name`` (a hub configuration); ``name`` here names the run
    ablation_keys = {f.name for f in dataclasses.fields(AblationConfig)}
    unknown = sorted(set(settings) - model_keys - data_keys - ablation_keys)
    if unknown:
        raise AblateError(f"unknown setting(s) {', '.join(unknown)} for a {family} run; use ablation settings "
                          f"({', '.join(sorted(ablation_keys))}), data settings ({', '.join(sorted(data_keys))}) or model "
                          f"settings ({', '.join(sorted(model_keys))})")
    pick = lambda keys: {k: v for k, v in settings.items() if k in keys}  # noqa: E731
    cfg = AblationConfig(**pick(ablation_keys))

    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with quiet:
        if in_memory:
            model_settings = pick(model_keys)
            model_settings["name"] = model_settings.pop("model_name", None)
            module = module_cls.from_model(model, preprocess if family == "vision" else tokenizer, **model_settings)
        else:
            if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
                raise AblateError("for a model given by name, pass tokenizer as a folder or hub id (or load the model and "
                                  "pass both objects)")
            if tokenizer is not None:
                settings["tokenizer"] = str(tokenizer)
            module = module_cls(str(model), **pick(model_keys | {"tokenizer"} if tokenizer is not None else model_keys))
        datamodule = _datamodule(data_cls, data, family, pick(data_keys), module)
        if not isinstance(trainer, L.Trainer):
            options = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
                       "enable_model_summary": False, "enable_progress_bar": verbose, "default_root_dir": str(root)}
            options.update(trainer or {})
            trainer = L.Trainer(**options)
        described = {"family": family, "model": module.model_label,
                     "data": str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__} in memory>",
                     **{k: v for k, v in settings.items()}}
        config_yaml = "".join(f"{k}: {v!r}\n" for k, v in described.items())
        run_dir = run_experiment(trainer, module, datamodule, cfg, name, str(root), config_yaml)
    return Results(run_dir)


def _datamodule(data_cls, data, family: str, settings: dict, module):
    """The family's DataModule over ``data`` (a path or hub name, or data in memory). Text windows
    default to the model's longest context up to 1024 tokens (the CLI's default is 1024)."""
    from torch.utils.data import DataLoader

    if "dataset_name" in settings:
        settings["name"] = settings.pop("dataset_name")
    if isinstance(data, DataLoader):
        if family != "causal_lm":
            raise AblateError("a DataLoader of token windows serves causal LMs; pass texts (a list of strings or a "
                              "datasets.Dataset) for other families")
        settings.setdefault("prepend_bos", False)
        first = next(iter(data), None)
        if first is None:
            raise AblateError("the DataLoader gives no batch; pass one with token windows")
        ids = first["input_ids"] if isinstance(first, dict) else first[0] if isinstance(first, (list, tuple)) else first
        settings.setdefault("context_length", int(ids.shape[-1]))
    elif family != "vision" and "context_length" not in settings:
        settings["context_length"] = min(1024, module.max_positions() or 1024)
    return data_cls(str(data) if isinstance(data, Path) else data, **settings)
