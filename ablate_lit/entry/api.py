"""The Python entry point: ``ablate_lit.run(...)``, for notebooks and scripts.

``run`` takes what the CLI takes (model, data and ablation settings as keyword arguments), and also
objects already in memory: a Hugging Face model with its tokenizer, a timm or Hugging Face image
classifier with its preprocessing, texts as a list of strings, a ``datasets.Dataset`` or a
DataLoader of token windows. It runs the same experiment as ``python -m ablate_lit test`` (the same
run folder, identity, resuming and caches) and returns a ``Results``. Errors raise ``AblateError``
(one line naming the fix, in ``run``'s words); nothing exits the interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ablate_lit.common import progress
from ablate_lit.common.errors import AblateError, wording
from ablate_lit.common.families import FAMILIES
from ablate_lit.common.logs import lightning_quiet, quiet_loading, verbosity
from ablate_lit.data.images import ImageData
from ablate_lit.data.masked import MaskedTextData
from ablate_lit.data.task import TaskData
from ablate_lit.data.text import TextData
from ablate_lit.entry.inputs import build_datamodule, build_module, datamodule_settings, family_of
from ablate_lit.entry.results import Results
from ablate_lit.entry.settings import check_all, keys_of
from ablate_lit.families.causal_lm import CausalLMAblation
from ablate_lit.families.masked_lm import MaskedLMAblation
from ablate_lit.families.vision import VisionAblation
from ablate_lit.runner.config import AblationConfig
from ablate_lit.runner.launch import check_destination, run_experiment
from ablate_lit.runner.trainer import AblationTrainer, check_devices

CLASSES = {
    c.__name__: c
    for c in (CausalLMAblation, MaskedLMAblation, VisionAblation, TextData, TaskData, MaskedTextData, ImageData)
}
"""ablate_lit's LightningModules and DataModules by name (``common.families`` names those of each family)."""


def classes_of(family: str, task: bool = False) -> tuple[type, type]:
    """(LightningModule, DataModule) of ``family``: its default data, or its task data with ``task``."""
    entry = FAMILIES[family]
    return CLASSES[entry.module], CLASSES[entry.task_data if task else entry.data[0]]


def run(
    model,
    data,
    *,
    tokenizer=None,
    preprocess=None,
    family: str | None = None,
    name: str | None = None,
    root: str | Path = "lightning_logs",
    trainer=None,
    verbose: bool = True,
    task: bool = False,
    **settings,
) -> Results:
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
        task: ``data`` holds task rows (prompt, answer, distractor, counterfactual), or names a shipped
            task (ioi, greater_than): scored on the answers (``TaskData``; causal LMs).
        tokenizer: the tokenizer of a language model in memory (the object, or its folder or hub id).
        preprocess: the image preprocessing of a Hugging Face image classifier in memory (its image
            processor, or any PIL-image-to-tensor function; a timm model's own evaluation transform is used).
        name: the run folder under ``root`` (default: the model's name and a hash of the settings).
        root: the folder holding the run folders.
        trainer: a ``lightning.Trainer``, or a dict of Trainer settings (default: one device, no logger).
        verbose: print progress and the summary table (as the CLI does).
        **settings: any ablation setting (methods, fractions, seeds, eps, site, unit, layers, order,
            kl, optimal_*, ...), data setting (max_tokens, calib_tokens, context_length, batch_size,
            mask_prob, max_images, calib_images, text_column, dataset_name for a hub data set's
            configuration, ...) and model setting (by name: dtype, gguf_file, generator, blocks, out_proj,
            ...; in memory: model_name naming it in tables, generator, blocks, out_proj, mlp_proj), as in
            the CLI's config.
    """
    quiet_loading()
    try:
        with wording("python"):
            return _run(model, data, tokenizer, preprocess, family, name, root, trainer, verbose, settings, task)
    except AblateError as exc:  # worded for run(): max_tokens=, not --data.max_tokens
        raise exc.freeze("python")


class _Settings:
    """``run``'s keyword settings, split by owner (ablation, data, model) and checked against the
    types each owner declares (``entry.settings``)."""

    def __init__(self, family: str, in_memory: bool, settings: dict, task: bool = False):
        module_cls, data_cls = classes_of(family, task)
        self.model_owner = module_cls.from_model if in_memory else module_cls
        self.model_keys = (
            keys_of(module_cls.from_model, {"model", "tokenizer", "preprocess", "name"}) | {"model_name"}
            if in_memory
            else keys_of(module_cls, {"name_or_path", "tokenizer"})
        )
        self.data_owners = [data_cls, TextData] if data_cls is MaskedTextData else [data_cls]
        self.data_keys = set().union(*(keys_of(o, {"name"}) for o in self.data_owners)) | {"dataset_name"}
        self.ablation_keys = keys_of(AblationConfig)
        unknown = sorted(set(settings) - self.model_keys - self.data_keys - self.ablation_keys)
        if unknown:
            raise AblateError(
                f"unknown setting(s) {', '.join(unknown)} for a {family} run (family read from the "
                f"model; family= overrides); use ablation settings ({', '.join(sorted(self.ablation_keys))}),"
                f" data settings ({', '.join(sorted(self.data_keys))}) or model settings "
                f"({', '.join(sorted(self.model_keys))})"
            )
        pick = lambda keys: {k: v for k, v in settings.items() if k in keys}  # noqa: E731
        self.ablation = AblationConfig(**check_all(pick(self.ablation_keys), [AblationConfig]))
        self.data = check_all(pick(self.data_keys), self.data_owners, {"dataset_name": "name"})
        self.model = check_all(pick(self.model_keys), [self.model_owner], {"model_name": "name"})


def _check_trainer(trainer, in_memory: bool) -> None:
    if trainer is not None and not isinstance(trainer, (dict, AblationTrainer)):
        raise AblateError(
            f"trainer must be a dict of Trainer settings (e.g. {{'accelerator': 'cpu'}}; those of "
            f"python -m ablate_lit test --help), not a {type(trainer).__name__}: a Trainer's training "
            "settings, loggers and checkpoints would act on optimal's fit"
        )
    precision = str(trainer.precision if isinstance(trainer, AblationTrainer) else (trainer or {}).get("precision"))
    if in_memory and precision.endswith("-true"):
        raise AblateError(
            f"precision {precision} casts the model's weights, and this model is yours, in memory; load "
            "it in that dtype (e.g. torch_dtype=torch.bfloat16) and use precision 32, or bf16-mixed"
        )


def _trainer(trainer, root) -> AblationTrainer:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    if not isinstance(trainer, AblationTrainer):
        options = {"accelerator": "auto", "devices": 1, "default_root_dir": str(root)}
        options.update(trainer or {})
        check_devices(options["accelerator"], options["devices"])
        try:
            trainer = AblationTrainer(**options)
        except (TypeError, ValueError, MisconfigurationException) as exc:
            raise AblateError(f"trainer settings {trainer}: {' '.join(str(exc).split())}") from exc
    if trainer.world_size > 1 and _interactive():
        raise AblateError(
            "several devices start one process per device, which a notebook or an interactive "
            "session cannot; run a script or the CLI (python -m ablate_lit test) for that"
        )
    return trainer


def _run(model, data, tokenizer, preprocess, family, name, root, trainer, verbose, settings, task) -> Results:
    family = family_of(model, family)
    if task and family != "causal_lm":
        raise AblateError(f"task=True scores a causal LM's answers; this model is {family}")
    in_memory = not isinstance(model, (str, Path))
    if family == "vision" and tokenizer is not None:
        raise AblateError("tokenizer= is for text models; a vision model takes preprocess= (or none, for timm)")
    if family != "vision" and preprocess is not None:
        raise AblateError("preprocess= is for vision models; a text model takes tokenizer=")
    checked = _Settings(family, in_memory, settings, task)
    check_destination(name, root, checked.ablation.cache_dir)
    _check_trainer(trainer, in_memory)
    progress.start()  # a fresh clock and plan for this run's progress display
    # Lightning's banners and bars stay out ("GPU available: ..." at every Trainer; its bars on request:
    # trainer={"enable_progress_bar": True})
    with lightning_quiet(), verbosity(verbose):
        module_cls, data_cls = classes_of(family, task)
        module = build_module(module_cls, model, family, tokenizer, preprocess, checked.model)
        datamodule = build_datamodule(data_cls, data, family, checked.data, module)
        trainer = _trainer(trainer, root)
        by_name = isinstance(data, (str, Path)) and not in_memory
        config_yaml = _config_yaml(module, datamodule, data, family, checked, trainer, settings, by_name)
        run_dir = run_experiment(trainer, module, datamodule, checked.ablation, name, str(root), config_yaml)
    return Results(run_dir)


def _config_yaml(module, datamodule, data, family, checked: _Settings, trainer, settings: dict, by_name: bool) -> str:
    """config.yaml: with a model and data by name, the CLI's config of the same run (``export`` and
    ``python -m ablate_lit test --config`` rebuild it); with either in memory, what was passed."""
    import dataclasses

    import yaml

    if by_name:
        data_args = datamodule_settings(type(datamodule), data, family, checked.data, module)
        config = {
            "ablation": dataclasses.asdict(checked.ablation),
            "model": {"class_path": f"ablate_lit.{type(module).__name__}", "init_args": dict(module.setting_values)},
            "data": {
                "class_path": f"ablate_lit.{type(datamodule).__name__}",
                "init_args": {"path": str(data), **data_args},
            },
            "trainer": {"precision": str(trainer.precision)},
        }
        try:
            return yaml.safe_dump(config, sort_keys=False)
        except yaml.YAMLError:  # a setting given as an object (a quantization config): described below
            pass
    described = {
        "family": family,
        "model": module.model_label,
        "data": str(data) if isinstance(data, (str, Path)) else f"<{type(data).__name__} in memory>",
        **settings,
    }
    return "".join(f"{k}: {v!r}\n" for k, v in described.items())


def _interactive() -> bool:
    return hasattr(sys, "ps1") or "ipykernel" in sys.modules or not sys.argv or sys.argv[0] in ("", "-", "-c")
