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
import re
import sys
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
        for col in ("fraction", "top1", "ce", "ppl", "kl", "eps"):  # floats even when every value is whole
            if col in df and df[col].dtype.kind in "iu":
                df[col] = df[col].astype(float)
        return df.sort_values(["method", "seed", "fraction"], kind="stable").reset_index(drop=True)

    def summary(self, fractions: list[float] | None = None) -> str:
        """Baseline, then mean ± std over seeds per method and fraction (Top1 in %, CE), in Markdown."""
        from ablate_lit.ablation.methods import METHODS
        from ablate_lit.report import summary_table

        rows = self.rows()
        order = list(METHODS)
        methods = sorted(dict.fromkeys(r["method"] for r in rows),  # the registry's order: zero, mean, ..., resample
                         key=lambda m: (order.index(m.split(":")[0]) if m.split(":")[0] in order else len(order), m))
        if fractions is None:
            fractions = sorted({float(r["fraction"]) for r in rows})
        elif isinstance(fractions, (int, float)) and not isinstance(fractions, bool):
            fractions = [fractions]
        if not isinstance(fractions, (list, tuple)) or not all(isinstance(f, (int, float)) and 0 <= f <= 1 for f in fractions):
            raise AblateError(f"fractions={fractions!r}: pass a list of fractions in [0, 1], e.g. [0.5, 0.9]")
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
        import json

        text = str(model)
        local = Path(text).expanduser()
        if local.is_dir() and (local / "config.json").is_file():
            try:
                config = json.loads((local / "config.json").read_text())
            except (OSError, ValueError):
                config = {}
            if "architecture" in config:  # timm's save_for_hf
                return "vision"
            names = " ".join(config.get("architectures") or [])
        else:
            try:
                import transformers

                names = " ".join(transformers.AutoConfig.from_pretrained(text).architectures or [])
            except Exception:  # out of reach (offline), or not a Hugging Face model: a timm name?
                import timm

                arch = text.removeprefix("timm/").split(".")[0]
                return "vision" if not local.exists() and timm.is_model(arch) else "causal_lm"
    else:
        if isinstance(model, type) or not hasattr(model, "parameters") or not callable(model):
            raise AblateError(f"model must be a hub id, a local folder, or a Hugging Face or timm model object, not a "
                              f"{type(model).__name__}")
        if hasattr(model, "pretrained_cfg"):
            return "vision"
        if not hasattr(model, "config"):
            raise AblateError(f"a {type(model).__name__} is neither a Hugging Face model (no .config) nor a timm model; "
                              "pass a transformers or timm model, or its hub id or folder")
        names = type(model).__name__
    if "MaskedLM" in names:
        return "masked_lm"
    if "ImageClassification" in names:
        return "vision"
    return "causal_lm"


def _checked_settings(values: dict) -> dict:
    """The ablation settings with the types the CLI's parser would enforce: a single method, fraction,
    seed or layer stands for a list of one; anything else of the wrong type is refused in one line."""
    import numbers

    def number(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    rules = {"methods": (str, "a list of method names, e.g. ['zero', 'mean', 'peak']"),
             "fractions": (number, "a list of numbers in [0, 1], e.g. [0, 0.5, 1]"),
             "seeds": (integer, "a list of integers, e.g. [0, 1, 2]"),
             "layers": (integer, "a list of layer indices, e.g. [0, -1]")}
    out = dict(values)
    for key, (ok, what) in rules.items():
        v = out.get(key)
        if v is None:
            continue
        ok_item = (lambda x: isinstance(x, str)) if ok is str else ok
        if ok_item(v):
            v = out[key] = [v]
        if not isinstance(v, (list, tuple)) or not all(ok_item(x) for x in v):
            raise AblateError(f"{key}={v!r}: {key} must be {what}")
        out[key] = list(v)
    for key, value in out.items():
        if key in rules or value is None:
            continue
        kind = {"eps": number, "optimal_lr": number, "optimal_held_out": number, "n_bins": integer, "n_resample": integer,
                "resample_seed": integer, "optimal_epochs": integer, "optimal_patience": integer,
                "optimal_batch_size": integer,
                "kl": lambda x: isinstance(x, bool), "log_histograms": lambda x: isinstance(x, bool)}.get(key)
        if kind is not None and not kind(value):
            noun = "boolean" if key in ("kl", "log_histograms") else "number" if kind is number else "integer"
            raise AblateError(f"{key}={value!r}: {key} must be {'an' if noun == 'integer' else 'a'} {noun}")
        if kind is None and key != "cache_dir" and not isinstance(value, str):
            raise AblateError(f"{key}={value!r}: {key} must be a string")
    return out


def _check_signature_types(owners: list, values: dict) -> None:
    """Data and model settings against their constructors' simple annotations (int, float, bool, str,
    optional or not; ``batch_size`` may be ``auto``): refused in one line, as the CLI's parser would."""
    import numbers

    ok = {"int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
          "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str)}
    for key, value in values.items():
        for owner in owners:
            fn = owner.__init__ if inspect.isclass(owner) else owner
            param = inspect.signature(fn).parameters.get({"dataset_name": "name", "model_name": "name"}.get(key, key))
            if param is None:
                continue
            kinds = [k.strip() for k in str(param.annotation).split("|")]
            if value is None and "None" in kinds:
                break
            if key == "batch_size" and value == "auto":
                break
            checks = [ok[k] for k in kinds if k in ok]
            if checks and not any(c(value) for c in checks):
                want = " or ".join(k for k in kinds if k in ok)
                raise AblateError(f"{key}={value!r}: {key} must be {'an' if want.startswith('int') else 'a'} {want}")
            break


def _pythonic(message: str) -> str:
    """A CLI message in the words of ``run``'s arguments (``--data.max_tokens`` is ``max_tokens=``)."""
    message = re.sub(r"--model ablate_lit\.MaskedLMAblation", 'family="masked_lm"', message)
    message = re.sub(r"--model ablate_lit\.CausalLMAblation", 'family="causal_lm"', message)
    message = re.sub(r"--model ablate_lit\.VisionAblation", 'family="vision"', message)
    message = re.sub(r"--trainer\.(\w+)( (\S+))?", lambda m: f"trainer={{'{m.group(1)}': {m.group(3) or '...'}}}", message)
    message = re.sub(r"--model\.name_or_path", "model=", message)
    message = re.sub(r"--data\.path", "data=", message)
    message = re.sub(r"--model\.name\b", "model_name=", message)
    message = re.sub(r"--(?:ablation|data|model)\.(\w+)", r"\1=", message)
    message = re.sub(r"\b(?:ablation|data)\.(\w+)", r"\1", message)  # "ablation.fractions holds nan"
    message = re.sub(r"--(name|root)\b", r"\1=", message)
    return message.replace("run the same command again", "call run(...) again")


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
    from ablate_lit.cli import _quiet_loading

    _quiet_loading()
    try:
        return _run(model, data, tokenizer, preprocess, family, name, root, trainer, verbose, settings)
    except AblateError as exc:  # the CLI's words (--data.max_tokens) become run's (max_tokens=)
        exc.args = (_pythonic(str(exc)),)
        raise


def _run(model, data, tokenizer, preprocess, family, name, root, trainer, verbose, settings) -> Results:
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ablate_lit import CausalLMAblation, ImageData, MaskedLMAblation, MaskedTextData, TextData, VisionAblation
    from ablate_lit.config import AblationConfig
    from ablate_lit.runs import check_destination, run_experiment
    from ablate_lit.trainer import AblationTrainer

    family = _family(model, family)
    module_cls = {"causal_lm": CausalLMAblation, "masked_lm": MaskedLMAblation, "vision": VisionAblation}[family]
    data_cls = {"causal_lm": TextData, "masked_lm": MaskedTextData, "vision": ImageData}[family]
    in_memory = not isinstance(model, (str, Path))
    model_keys = (_parameters(module_cls.from_model) - {"model", "tokenizer", "preprocess", "name"} | {"model_name"}
                  if in_memory else _parameters(module_cls) - {"name_or_path", "tokenizer"})
    data_keys = (_parameters(data_cls) | (_parameters(TextData) if data_cls is MaskedTextData else set())) - {"name"}
    data_keys.add("dataset_name")  # the data class's ``name`` (a hub configuration); ``name`` here names the run
    ablation_keys = {f.name for f in dataclasses.fields(AblationConfig)}
    unknown = sorted(set(settings) - model_keys - data_keys - ablation_keys)
    if unknown:
        raise AblateError(f"unknown setting(s) {', '.join(unknown)} for a {family} run (family read from the model; "
                          f"family= overrides); use ablation settings ({', '.join(sorted(ablation_keys))}), data settings "
                          f"({', '.join(sorted(data_keys))}) or model settings ({', '.join(sorted(model_keys))})")
    if family == "vision" and tokenizer is not None:
        raise AblateError("tokenizer= is for text models; a vision model takes preprocess= (or none, for timm)")
    if family != "vision" and preprocess is not None:
        raise AblateError("preprocess= is for vision models; a text model takes tokenizer=")
    pick = lambda keys: {k: v for k, v in settings.items() if k in keys}  # noqa: E731
    cfg = AblationConfig(**_checked_settings(pick(ablation_keys)))
    _check_signature_types([data_cls, TextData], pick(data_keys))
    _check_signature_types([module_cls.from_model if in_memory else module_cls], pick(model_keys))
    check_destination(name, root, cfg.cache_dir)
    if trainer is not None and not isinstance(trainer, (dict, AblationTrainer)):
        raise AblateError(f"trainer must be a dict of Trainer settings (e.g. {{'accelerator': 'cpu'}}; those of "
                          f"python -m ablate_lit test --help), not a {type(trainer).__name__}: a Trainer's training "
                          "settings, loggers and checkpoints would act on optimal's fit")
    precision = str(trainer.precision if isinstance(trainer, AblationTrainer) else (trainer or {}).get("precision"))
    if in_memory and precision.endswith("-true"):
        raise AblateError(f"precision {precision} casts the model's weights, and this model is yours, in memory; load "
                          "it in that dtype (e.g. torch_dtype=torch.bfloat16) and use precision 32, or bf16-mixed")

    from ablate_lit.cli import lightning_info_silenced

    quiet = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
    with lightning_info_silenced(not verbose):  # "GPU available: ..." at every Trainer
        with quiet:
            if in_memory:
                if isinstance(tokenizer, (str, Path)):  # a folder or hub id: loaded as the CLI would
                    from ablate_lit.families.hf import load_tokenizer

                    tokenizer = load_tokenizer(str(tokenizer), None, given=True)
                model_settings = pick(model_keys)
                model_settings["name"] = model_settings.pop("model_name", None)
                module = module_cls.from_model(model, preprocess if family == "vision" else tokenizer, **model_settings)
            else:
                model_settings = pick(model_keys)
                if tokenizer is not None:
                    if not isinstance(tokenizer, (str, Path)):
                        raise AblateError("for a model given by name, pass tokenizer as a folder or hub id (or load the "
                                          "model and pass both objects)")
                    model_settings["tokenizer"] = str(tokenizer)
                module = module_cls(str(model), **model_settings)
            datamodule = _datamodule(data_cls, data, family, pick(data_keys), module)
            if not isinstance(trainer, L.Trainer):
                options = {"accelerator": "auto", "devices": 1, "enable_progress_bar": verbose, "default_root_dir": str(root)}
                options.update(trainer or {})
                try:
                    trainer = AblationTrainer(**options)
                except (TypeError, ValueError, MisconfigurationException) as exc:
                    raise AblateError(f"trainer settings {trainer}: {' '.join(str(exc).split())}") from exc
            if trainer.world_size > 1 and _interactive():
                raise AblateError("several devices start one process per device, which a notebook or an interactive "
                                  "session cannot; run a script or the CLI (python -m ablate_lit test) for that")
            described = {"family": family, "model": module.model_label,
                         "data": str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__} in memory>",
                         **{k: v for k, v in settings.items()}}
            config_yaml = "".join(f"{k}: {v!r}\n" for k, v in described.items())
            run_dir = run_experiment(trainer, module, datamodule, cfg, name, str(root), config_yaml)
    return Results(run_dir)


def _interactive() -> bool:
    return hasattr(sys, "ps1") or "ipykernel" in sys.modules or not sys.argv or sys.argv[0] in ("", "-", "-c")


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
        if isinstance(first, dict) and "input_ids" not in first:
            raise AblateError(f"the DataLoader's batches have no 'input_ids' (keys: {', '.join(map(str, first))}); give "
                              "token windows as input_ids [batch, context_length]")
        ids = first["input_ids"] if isinstance(first, dict) else first[0] if isinstance(first, (list, tuple)) else first
        if hasattr(ids, "shape") and len(ids.shape) == 2:  # the windows' length (checked in full when they are read)
            settings.setdefault("context_length", int(ids.shape[-1]))
    elif family != "vision" and "context_length" not in settings:
        settings["context_length"] = min(1024, module.max_positions() or 1024)
    return data_cls(str(data) if isinstance(data, Path) else data, **settings)
