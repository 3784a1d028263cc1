"""The private APIs ablate_lit relies on (``ablate_lit.common.private``) still do what it relies on:
each test calls one wrapper on the real library, so a release that changes one fails here, by name."""

from __future__ import annotations

import ast
from pathlib import Path

import lightning as L
import pytest
import torch

from ablate_lit.common import private

PACKAGE = Path(__file__).resolve().parents[1] / "ablate_lit"


def test_module_to_arguments_parse_into_device_and_dtype():
    device, dtype, *_ = private.parse_to("cpu", torch.float16)
    assert device == torch.device("cpu") and dtype == torch.float16
    assert private.parse_to(dtype=torch.bfloat16)[:2] == (None, torch.bfloat16)


def test_a_fresh_fit_loop_is_installed_and_restored():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    before = trainer.fit_loop
    saved = private.fresh_fit_loop(trainer, 3)
    assert trainer.fit_loop is not before and trainer.fit_loop.max_epochs == 3 and trainer.num_sanity_val_steps == 0
    private.restore_fit_loop(trainer, saved)
    assert trainer.fit_loop is before


def test_evaluation_loops_are_switched_to_no_grad():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    assert trainer.validate_loop.inference_mode and trainer.test_loop.inference_mode
    private.evaluate_under_no_grad(trainer)
    assert not trainer.validate_loop.inference_mode and not trainer.test_loop.inference_mode


def test_the_cli_parser_of_the_test_command(tmp_path):
    from ablate_lit.entry.lightning_cli import build_cli

    with pytest.raises(SystemExit):  # --help prints and exits: the parser was built
        build_cli(["test", "--help"])
    from lightning.pytorch.cli import LightningCLI

    assert callable(getattr(LightningCLI, "_parser", None))


def test_auto_classes_say_which_configs_they_take():
    from transformers import BertConfig, LlamaConfig, ViTConfig

    assert private.auto_class_takes("AutoModelForCausalLM", LlamaConfig())
    assert private.auto_class_takes("AutoModelForMaskedLM", BertConfig())
    assert not private.auto_class_takes("AutoModelForCausalLM", ViTConfig())


def test_logger_internals(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{tmp_path / 'mlruns'}"
    assert private.mlflow_uri(MLFlowLogger(tracking_uri=uri)) == uri
    pytest.importorskip("wandb")
    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    private.finish_wandb(logger, 0)  # never started: nothing to finish
    assert logger._experiment is None


def test_strategy_settings_and_the_device_mesh():
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

    assert private.start_method(DDPStrategy()) == "popen"
    assert private.start_method(DDPStrategy(start_method="spawn")) == "spawn"
    assert private.tensor_parallel_size(ModelParallelStrategy(tensor_parallel_size=2)) == 2
    assert private.tensor_parallel_size(DDPStrategy()) == 1
    assert private.device_mesh(L.LightningModule()) is None


def test_accelerate_hooks_and_module_storage():
    accelerate = pytest.importorskip("accelerate")
    layer = torch.nn.Linear(2, 2)
    assert private.accelerate_hook(layer) is None
    accelerate.hooks.add_hook_to_module(layer, accelerate.hooks.ModelHook())
    assert private.accelerate_hook(layer) is not None
    block = torch.nn.Sequential(torch.nn.Linear(2, 2))
    block.register_buffer("scale", torch.ones(1))
    children, buffers = private.children_and_buffers(block)
    assert list(children) == ["0"] and list(buffers) == ["scale"]


def test_metric_state_defaults():
    from ablate_lit.stats import TokenScores

    assert {"correct", "nll", "total"} <= set(private.metric_defaults(TokenScores()))


def test_the_gguf_conversion_bar_is_silenced_and_restored():
    """transformers converts GGUF tensors under a module-level tqdm bar; inside the block it is disabled."""
    from transformers import modeling_gguf_pytorch_utils as gguf

    before = gguf.tqdm
    with private.gguf_bar_silenced():
        assert gguf.tqdm([1, 2]).disable
    assert gguf.tqdm is before


PRIVATE_NAMES = (
    "_parse_to",
    "_FitLoop",
    "_TrainingEpochLoop",
    "_parser",
    "_model_mapping",
    "_tracking_uri",
    "_experiment",
    "_start_method",
    "_tensor_parallel_size",
    "_device_mesh",
    "_hf_hook",
    "_modules",
    "_buffers",
    "_defaults",
)


def test_no_module_but_private_uses_them():
    """The names above are read in ``common/private.py`` only."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else node.name if isinstance(node, ast.alias) else None
            name = name.rsplit(".", 1)[-1] if name else None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            if name in PRIVATE_NAMES:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert not found, found
