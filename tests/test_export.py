"""``python -m ablate_lit export`` and ``Results.export``: the saved model, loaded with plain
``from_pretrained`` / timm, gives the row's CE on the run's evaluation inputs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, converted_from_gguf, data, lm_ce, module, one_line_error, read_rows, run, tiny_args

from ablate_lit import load
from ablate_lit import run as run_api

METHODS = "[zero,mean,peak,optimal,resample:random_tokens]"


def _row(rows, method, fraction, seed):
    return next(r for r in rows if r["method"] == method and r["fraction"] == fraction and str(r["seed"]) == str(seed))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_exported_models_give_the_rows_ce(capsys, tiny_models, corpus, tmp_path, arch):
    code, _, err = run(capsys, *tiny_args(tiny_models[arch], corpus, tmp_path, "--ablation.methods", METHODS))
    assert code == 0, err
    rows = read_rows(tmp_path / "run" / "results.csv")
    windows = data(corpus, module(tiny_models[arch])).eval_windows
    for method, fraction, seed in [("mean", "0.5", 1), ("optimal", "0.5", 0), ("peak", "1", 0), ("zero", "0", 0)]:
        out = tmp_path / f"{method}-{fraction}-{seed}"
        code, said, err = cli(
            capsys, "export", tmp_path / "run", "--method", method, "--fraction", fraction, "--seed", seed, "--out", out
        )
        assert code == 0, err
        assert (
            "LightningCLI" not in said + err and "Seed set" not in said + err
        )  # (pytest's argv is long: it would warn)
        row = _row(rows, method, fraction, seed)
        assert lm_ce(out, windows) == pytest.approx(float(row["ce"]), rel=1e-5), (method, fraction)
        record = json.loads((out / "ablation.json").read_text())
        assert record["n_ablated"] == int(row["n_ablated"]) == sum(map(len, record["ablated"].values()))
        assert record["heads_removed"] is False and "no head pruning" in record["how"]
        assert (out / "tokenizer.json").exists() or (out / "tokenizer_config.json").exists()
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}  # the weights as readable as the rest
        assert modes["model.safetensors"] == modes["config.json"] and modes["config.json"] & 0o044, modes
    if arch == "llama":  # o_proj had no bias: the config now builds one (and zero ones for q, k, v)
        assert json.loads((tmp_path / "mean-0.5-1" / "config.json").read_text())["attention_bias"] is True
        assert (
            "attention_bias" not in json.loads((tmp_path / "zero-0-0" / "config.json").read_text())
            or not (json.loads((tmp_path / "zero-0-0" / "config.json").read_text())["attention_bias"])
        )  # zero needs no bias
    code, _, err = cli(capsys, "export", tmp_path / "run", "--method", "resample:random_tokens", "--fraction", "0.5",
                       "--out", tmp_path / "r")  # fmt: skip
    assert code != 0 and "constant method" in one_line_error(err)
    code, _, err = cli(
        capsys, "export", tmp_path / "run", "--method", "mean", "--fraction", "0.3", "--out", tmp_path / "x"
    )
    assert code != 0 and "mean 0.5 seed 0" in one_line_error(err)


@pytest.mark.slow
def test_results_export_from_python_and_refusals(capsys, tiny_models, corpus, tmp_path):
    settings = dict(max_tokens=120, calib_tokens=256, context_length=16, batch_size=4, n_resample=2, seeds=[0])
    results = run_api(
        str(tiny_models["opt"]), str(corpus), root=tmp_path, name="opt", verbose=False,
        trainer={"accelerator": "cpu"}, methods=["zero", "mean"], fractions=[0, 0.5], **settings,
    )  # fmt: skip
    out = results.export("mean", 0.5, seed=0, out=tmp_path / "opt-mean")
    windows = data(corpus, module(tiny_models["opt"])).eval_windows
    assert lm_ce(out, windows) == pytest.approx(float(_row(results.rows(), "mean", "0.5", 0)["ce"]), rel=1e-5)
    assert type(load(tmp_path / "opt")).__name__ == "Results" and hasattr(load(tmp_path / "opt"), "export")

    mistral = run_api(
        str(tiny_models["mistral"]), str(corpus), root=tmp_path, name="mistral", verbose=False,
        trainer={"accelerator": "cpu"}, methods=["zero", "mean"], fractions=[0.5], **settings,
    )  # fmt: skip
    from ablate_lit.common.errors import AblateError

    with pytest.raises(AblateError, match="no bias, and its config has no setting"):
        mistral.export("mean", 0.5, out=tmp_path / "m-mean")
    assert not list(tmp_path.glob("*m-mean*"))  # a failed export leaves no folder, whole or partial
    assert lm_ce(mistral.export("zero", 0.5, out=tmp_path / "m-zero"), windows) == pytest.approx(
        float(_row(mistral.rows(), "zero", "0.5", 0)["ce"]), rel=1e-5
    )
    with pytest.raises(AblateError, match="not an empty folder"):
        results.export("mean", 0.5, out=tmp_path / "opt-mean")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(AblateError, match="not an empty folder"):
        results.export("mean", 0.5, out=tmp_path / "a-file")
    in_memory = run_api(
        module(tiny_models["opt"]).model, ["some text " * 40] * 8, tokenizer=module(tiny_models["opt"]).tokenizer,
        root=tmp_path, name="mem", verbose=False, trainer={"accelerator": "cpu"}, methods=["zero"],
        fractions=[0.5], **{**settings, "calib_tokens": 64, "max_tokens": 64},
    )  # fmt: skip
    with pytest.raises(AblateError, match="in memory"):
        in_memory.export("zero", 0.5, out=tmp_path / "mem-zero")
    with pytest.raises(AblateError, match="cannot be written; pass a folder you can write"):
        results.export("mean", 0.5, out=tmp_path / "a-file" / "inside")  # (checked before the run is rebuilt)
    stale = tmp_path / ".opt-zero.partial-999999999"  # left by a killed export: its process is gone
    stale.mkdir()
    results.export("zero", 0.5, out=tmp_path / "opt-zero")
    assert not stale.exists() and (tmp_path / "opt-zero" / "ablation.json").exists()
    heads = run_api(
        str(tiny_models["opt"]), str(corpus), root=tmp_path, name="heads", verbose=False,
        trainer={"accelerator": "cpu"}, methods=["zero"], schedule="each", unit="head", **settings,
    )  # fmt: skip
    with pytest.raises(AblateError, match="is a single-unit map: each row ablates one unit"):
        heads.export("zero", 0.125, out=tmp_path / "one-head")


@pytest.mark.slow
def test_a_timm_vit_exports_as_a_timm_folder(capsys, tiny_vision, image_folder, tmp_path):
    import timm

    from ablate_lit import ImageData, VisionAblation

    settings = dict(max_images=20, calib_images=10, batch_size=8, seeds=[0])
    results = run_api(
        str(tiny_vision["timm"]), str(image_folder), root=tmp_path, name="vit", verbose=False,
        trainer={"accelerator": "cpu"}, methods=["zero"], fractions=[0.5], **settings,
    )  # fmt: skip
    out = results.export("zero", 0.5, out=tmp_path / "vit-zero")
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    mod = VisionAblation(str(tiny_vision["timm"]))
    d = ImageData(str(image_folder), max_images=20, calib_images=10, batch_size=8)
    mod.connect_data(d)
    d.setup()
    x, y = zip(*[(b["pixel_values"], b["label"]) for b in d.test_dataloader()])
    with torch.no_grad():
        ce = float(F.cross_entropy(model(torch.cat(x)), torch.cat(y)))
    assert ce == pytest.approx(float(_row(results.rows(), "zero", "0.5", 0)["ce"]), rel=1e-5)


@pytest.mark.slow
def test_a_model_read_from_a_gguf_file_exports_as_a_plain_model(capsys, tiny_models, corpus, tmp_path):
    """A GGUF file is dequantised once into a folder whose config still names the ``gguf`` quantization
    (as ``families.loading.hf._convert_gguf`` writes it; the demo model is one); transformers refuses to
    save such a model, and the export is a plain float model."""
    folder = converted_from_gguf(tiny_models["llama"], tmp_path / "converted")
    args = tiny_args(folder, corpus, tmp_path, "--ablation.methods", "[mean]", "--ablation.seeds", "[0]")
    code, _, err = run(capsys, *args)
    assert code == 0, err
    out = tmp_path / "ablated"
    code, _, err = cli(capsys, "export", tmp_path / "run", "--method", "mean", "--fraction", "0.5", "--out", out)
    assert code == 0, err
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    row = _row(read_rows(tmp_path / "run" / "results.csv"), "mean", "0.5", 0)
    windows = data(corpus, module(tiny_models["llama"])).eval_windows
    assert lm_ce(out, windows) == pytest.approx(float(row["ce"]), rel=1e-5)
