"""The Python API (ablate_lit.run / load): models and data in memory, against the CLI and by hand."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers import read_rows, run, tiny_args

import ablate_lit
from ablate_lit import AblateError

SETTINGS = dict(
    max_tokens=120,
    calib_tokens=256,
    context_length=16,
    batch_size=4,
    seeds=[0, 1],
    fractions=[0, 0.5, 1],
    methods=["zero", "mean", "peak", "resample:random_tokens"],
    n_resample=2,
    trainer={"accelerator": "cpu"},
    verbose=False,
)


def _in_memory_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ablate_lit.testing.tiny import _scale_weights

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    _scale_weights(model)
    return model


@pytest.mark.slow
def test_a_model_in_memory_on_a_list_of_strings_gives_the_cli_table_of_the_same_model_saved(
    capsys, assets, corpus, tmp_path
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = _in_memory_llama(tokenizer)
    texts = [p.read_text() for p in sorted(Path(corpus).glob("*.txt"))]  # the corpus folder's documents, in its order
    results = ablate_lit.run(model, texts, tokenizer=tokenizer, root=tmp_path / "api", **SETTINGS)
    api = results.table()
    assert len(api) == 4 * 2 * 3 and api["top1"].dtype.kind == "f" and api["seed"].dtype.kind == "i"
    assert results.run_dir.parent == tmp_path / "api" and results.run_dir.name.startswith("llama-")

    model.save_pretrained(tmp_path / "saved")  # the same weights, now on disk, through the CLI
    tokenizer.save_pretrained(tmp_path / "saved")
    args = tiny_args(
        tmp_path / "saved", corpus, tmp_path / "cli", "--ablation.methods", "[zero,mean,peak,resample:random_tokens]"
    )
    code, _, err = run(capsys, *args)
    assert code == 0, err
    cli = {
        (r["method"], int(r["seed"]), float(r["fraction"])): r
        for r in read_rows(tmp_path / "cli" / "run" / "results.csv")
    }
    assert len(cli) == len(api)
    for row in api.to_dict("records"):
        other = cli[(row["method"], row["seed"], row["fraction"])]
        assert row["ce"] == pytest.approx(float(other["ce"]), rel=1e-6)
        assert row["top1"] == pytest.approx(float(other["top1"]), abs=1e-12)
        assert row["n_tokens"] == int(other["n_tokens"])

    reopened = ablate_lit.load(results.run_dir)
    assert reopened.table().equals(api)
    summary = reopened.summary()
    assert "Top1 accuracy (%)" in summary and "1 seed" not in summary and "mean ± std over 2 seeds" in summary
    assert (
        summary.index("| zero |") < summary.index("| mean |") < summary.index("| peak |") < summary.index("| resample:")
    )
    stats = reopened.statistics
    assert {"layer", "neuron", "mean", "peak", "std"} <= set(stats.columns) and len(stats) == 2 * 32
    fig = reopened.figure()
    top1, ce = fig.axes[:2]
    assert top1.get_ylabel() == "Top1 accuracy (%)" and ce.get_ylabel().startswith("cross-entropy")
    assert top1.get_xlabel() == "neurons ablated (%)"
    assert "unablated" in [line.get_label() for line in top1.get_lines()]
    assert re.search(r"2 seeds, band: ± one std over seeds, 120 scored tokens per point", fig._suptitle.get_text())


def test_a_dataloader_of_token_windows_is_used_as_it_is(assets, corpus, tmp_path):
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = _in_memory_llama(tokenizer)
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(5, len(tokenizer), (30, 12), generator=g)
    loader = DataLoader([{"input_ids": w} for w in windows], batch_size=5)
    settings = {**SETTINGS, "methods": ["mean"], "seeds": [0], "fractions": [0], "max_tokens": 36, "calib_tokens": 120}
    settings.pop("context_length")
    results = ablate_lit.run(model, loader, tokenizer=tokenizer, root=tmp_path, **settings)
    row = results.table().iloc[0]
    order = torch.randperm(
        3 + 10, generator=torch.Generator().manual_seed(0)
    )  # data.seed 0 splits the first 13 windows
    evaluated = windows[:13][order[:3]]
    with torch.no_grad():
        logits = model(input_ids=evaluated).logits
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), evaluated[:, 1:].reshape(-1))
    assert row["n_tokens"] == 3 * 11 and row["ce"] == pytest.approx(float(ce), rel=1e-5)


def test_a_timm_model_in_memory_on_a_list_of_images(image_folder, tmp_path):
    import timm
    from PIL import Image

    from ablate_lit.testing.tiny import N_CLASSES

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        num_classes=N_CLASSES,
    )
    classes = sorted(p.name for p in Path(image_folder).iterdir())
    rows = [
        {"image": Image.open(f).convert("RGB"), "label": classes.index(f.parent.name)}
        for f in sorted(Path(image_folder).rglob("*.png"))
    ]
    for bad, message in (
        ([r["image"] for r in rows], "rows"),
        ([{**r, "label": "cat"} for r in rows], "not an integer class"),
    ):
        with pytest.raises(AblateError, match=message):
            ablate_lit.run(model, bad, max_images=6, calib_images=6, root=tmp_path, verbose=False)
    results = ablate_lit.run(
        model,
        rows,
        methods=["zero", "mean", "resample:random_pixels"],
        seeds=[0],
        fractions=[0, 1],
        max_images=6,
        calib_images=6,
        batch_size=3,
        root=tmp_path,
        verbose=False,
        trainer={"accelerator": "cpu"},
    )
    table = results.table()
    assert len(table) == 3 * 2 and set(table["n_tokens"]) == {6}
    assert results.run_dir.name.startswith("vit_tiny_patch16_224-")


def test_errors_raise_ablate_error_and_never_exit(assets, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = _in_memory_llama(tokenizer)
    (tmp_path / "a-file").write_text("")
    cases = [
        (dict(methodz=["zero"]), "unknown setting(s) methodz"),
        (dict(methods=["nope"]), "unknown ablation method 'nope'"),
        (dict(methods="nope"), "unknown ablation method 'nope'"),  # one method stands for a list of one
        (
            dict(max_tokens=10**7, context_length=16),
            "lower calib_tokens= and max_tokens= (together at most ~",
        ),  # CLI words made run's
        (dict(family="audio"), "unknown family 'audio'"),
        (dict(name="../escape"), "must be a plain folder name inside root="),
        (dict(root=tmp_path / "a-file"), "root= '"),
        (dict(fractions=["half"]), "fractions must be a list of numbers in [0, 1]"),
        (dict(seeds=1.5), "seeds must be a list of integers"),
        (dict(kl="yes"), "kl must be a boolean"),
        (dict(eps="0.01"), "eps must be a number"),
        (dict(optimal_epochs=0), "optimal_epochs must be at least 1"),
        (dict(trainer="cpu"), "trainer must be a dict of Trainer settings"),
        (dict(trainer={"acelerator": "cpu"}, context_length=16), "trainer settings {'acelerator': 'cpu'}"),
        (dict(preprocess=lambda image: image), "preprocess= is for vision models"),
        (dict(max_tokens="100"), "max_tokens='100': max_tokens must be an int"),
        (dict(prepend_bos="no"), "prepend_bos must be a bool"),
        (dict(batch_size=2.5), "batch_size must be an int or str"),
        (dict(model_name=3), "model_name=3"),
        (dict(trainer={"precision": "bf16-true"}), "precision bf16-true casts the model's weights"),
    ]
    for extra, message in cases:
        with pytest.raises(AblateError, match=re.escape(message)):
            ablate_lit.run(
                model, ["some text " * 50], tokenizer=tokenizer, verbose=False, **{"root": tmp_path, **extra}
            )
    with pytest.raises(AblateError, match="needs the model's tokenizer"):
        ablate_lit.run(model, ["text"], root=tmp_path, verbose=False)
    with pytest.raises(AblateError, match="text 0 is a int"):  # a tokenizer given as a folder is loaded
        ablate_lit.run(model, [3], tokenizer=assets / "tokenizer", root=tmp_path, verbose=False, context_length=16)
    with pytest.raises(AblateError, match="text 1 is a int, not a string"):
        ablate_lit.run(model, ["text " * 200, 5], tokenizer=tokenizer, root=tmp_path, verbose=False, context_length=16)
    with pytest.raises(AblateError, match="holds no results"):
        ablate_lit.load(tmp_path / "nothing")
    for bad in (None, torch.nn.Linear(2, 2), tokenizer):
        with pytest.raises(AblateError, match="model must be a hub id|neither a Hugging Face model"):
            ablate_lit.run(bad, ["text"], tokenizer=tokenizer, root=tmp_path, verbose=False)


def test_a_dataloader_of_wrong_windows_is_refused_in_one_line(assets, tmp_path):
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "tokenizer")
    model = _in_memory_llama(tokenizer)
    ids = torch.randint(5, 50, (20, 8))
    cases = [
        (DataLoader(ids.float(), batch_size=4), "token ids must be integers"),
        (DataLoader(ids + len(tokenizer), batch_size=4), "outside the tokenizer's"),
        (DataLoader([{"ids": w} for w in ids], batch_size=4), "have no 'input_ids'"),
        (DataLoader([{"input_ids": w, "attention_mask": (w > 20).long()} for w in ids], batch_size=4), "are padded"),
        (DataLoader(ids, batch_size=4, shuffle=True), "shuffle=False"),
    ]
    for loader, message in cases:
        with pytest.raises(AblateError, match=re.escape(message)):
            ablate_lit.run(
                model,
                loader,
                tokenizer=tokenizer,
                max_tokens=16,
                calib_tokens=16,
                root=tmp_path,
                verbose=False,
                trainer={"accelerator": "cpu"},
            )


def test_a_hub_name_offline_is_a_causal_lm_out_of_reach_not_a_timm_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        AblateError, match=r"could not load model 'gpt2' .*without internet.*pass the local folder with model="
    ):
        ablate_lit.run("gpt2", ["text"], root=tmp_path, verbose=False, max_tokens=16)


@pytest.mark.slow
def test_a_masked_lm_object_and_a_datasets_dataset_give_the_cli_numbers(capsys, tiny_masked, corpus, tmp_path):
    import datasets
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = tiny_masked["roberta"]
    model, tokenizer = AutoModelForMaskedLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    texts = datasets.Dataset.from_dict({"body": [p.read_text() for p in sorted(Path(corpus).glob("*.txt"))]})
    settings = dict(
        methods=["zero", "mean"],
        seeds=[0],
        fractions=[0, 0.5],
        max_tokens=120,
        calib_tokens=256,
        context_length=16,
        batch_size=4,
        trainer={"accelerator": "cpu"},
        verbose=False,
    )
    api = ablate_lit.run(
        model, texts, tokenizer=tokenizer, text_column="body", root=tmp_path / "api", **settings
    ).table()
    assert set(api["method"]) == {"zero", "mean"}
    code, _, err = run(
        capsys,
        "--model",
        "ablate_lit.MaskedLMAblation",
        "--model.name_or_path",
        folder,
        "--data",
        "ablate_lit.MaskedTextData",
        "--data.path",
        corpus,
        "--data.max_tokens",
        120,
        "--data.calib_tokens",
        256,
        "--data.context_length",
        16,
        "--data.batch_size",
        4,
        "--ablation.methods",
        "[zero,mean]",
        "--ablation.seeds",
        "[0]",
        "--ablation.fractions",
        "[0,0.5]",
        "--root",
        tmp_path / "cli",
        "--name",
        "run",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    )
    assert code == 0, err
    cli = {(r["method"], float(r["fraction"])): r for r in read_rows(tmp_path / "cli" / "run" / "results.csv")}
    for row in api.to_dict("records"):
        assert row["ce"] == pytest.approx(float(cli[(row["method"], row["fraction"])]["ce"]), rel=1e-6)
        assert row["n_tokens"] == int(cli[(row["method"], row["fraction"])]["n_tokens"]) > 0
