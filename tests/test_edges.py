"""The edges a user trips over: layers with different token counts, check passes that change the model,
hook places that cannot be checked, models that take one input length, widths stated under other names,
models without attention, and a run that stays silent.

Every model here is a tiny random-init one of ``ablate_lit.testing.zoo``, run through the real CLI; the
numbers are recomputed with plain forward pre-hooks on the modules named below (read from each
architecture's code, not from ablate_lit).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from helpers import launch, one_line_error, patched, read_rows, run, tiny_args

from ablate_lit import AblateError, ImageData, MaskedLMAblation, MaskedTextData, VisionAblation
from ablate_lit.ablation.schedule import ablation_mask, neuron_order

# model -> the modules whose input is the heads' output, in execution order
VISION_HOOKED = {
    "hf-pvt": [f"pvt.encoder.block.{s}.0.attention.output.dense" for s in (0, 1)],
    "hf-pvt_v2": [f"pvt_v2.encoder.layers.{s}.blocks.0.attention.proj" for s in (0, 1)],
    "hf-segformer": [f"segformer.stages.{s}.blocks.0.attention.o_proj" for s in (0, 1)],
    "hf-cvt": [f"cvt.encoder.stages.{s}.layers.{i}.attention.output.dense" for s in range(3) for i in range(s + 1)],
    "timm-convit": [f"blocks.{i}.attn.proj" for i in range(3)],  # 16 tokens, then 17 (the class token joins)
    "timm-twins": [f"blocks.{s}.0.attn.proj" for s in range(4)],
    "timm-pvt": [f"stages.{s}.blocks.0.attn.proj" for s in range(4)],
    "timm-levit": [f"stages.{s}.blocks.0.attn.proj" for s in range(3)],  # a Sequential: Hardswish, Linear, BN
}
IMAGES = dict(max_images=10, calib_images=10, batch_size=5)


def _with(model, paths, fn, forward):
    """forward() while the input x of ``paths[l]`` becomes fn(l, x) (``helpers.patched``, no ablate_lit hooks)."""
    return patched(model, paths, len(paths), fn, forward)


def _cli(family, folder, data_args, root, *extra):
    model, data = {"vision": ("VisionAblation", "ImageData"), "masked": ("MaskedLMAblation", "MaskedTextData")}[family]
    return [
        "--model", f"ablate_lit.{model}", "--model.name_or_path", folder, "--data", f"ablate_lit.{data}", *data_args,
        "--ablation.fractions", "[0,0.5,1]", "--ablation.seeds", "[0]", "--ablation.log_histograms", "false",
        "--root", root, "--name", "run", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(VISION_HOOKED))
def test_layers_with_different_token_counts_match_a_hand_hook(capsys, zoo, image_folder, tmp_path, name):
    """zero, mean and resample:data (every calibration image, every position of every layer) on layers
    that see different numbers of tokens."""
    data_args = ["--data.path", image_folder] + [x for k, v in IMAGES.items() for x in (f"--data.{k}", v)]
    methods = ["--ablation.methods", "[zero,mean,resample:data]", "--ablation.n_resample", 10]
    code, out, err = run(capsys, *_cli("vision", zoo[name], data_args, tmp_path, *methods))
    assert code == 0, err
    assert "checked equal to the attention output" in out
    rows = {(r["method"], r["fraction"]): float(r["ce"]) for r in read_rows(tmp_path / "run" / "results.csv")}

    mod = VisionAblation(str(zoo[name]))
    d = ImageData(str(image_folder), **IMAGES)
    mod.connect_data(d)
    d.setup()
    stack = lambda ds: torch.stack([ds[i]["pixel_values"] for i in range(len(ds))])  # noqa: E731
    x, labels, calib = stack(d.eval_set), torch.tensor(d.eval_set.labels), stack(d.calib_set)
    paths = VISION_HOOKED[name]

    def ce():
        out = mod.model(x) if mod.backend == "timm" else mod.model(pixel_values=x).logits
        return float(F.cross_entropy(out, labels))

    def forward(images):
        return lambda: mod.model(images) if mod.backend == "timm" else mod.model(pixel_values=images)

    seen: dict[int, torch.Tensor] = {}
    _with(mod.model, paths, lambda l, h: seen.setdefault(l, h.clone()), forward(calib))
    counts = {seen[l].shape[1] for l in seen}
    mean = torch.stack([seen[l].reshape(-1, seen[l].shape[-1]).double().mean(0) for l in range(len(paths))]).float()
    rows_drawn = torch.randperm(10, generator=torch.Generator().manual_seed(0))  # resample_seed 0, 10 rows
    drawn: dict[int, torch.Tensor] = {}
    _with(mod.model, paths, lambda l, h: drawn.setdefault(l, h.clone()), forward(calib[rows_drawn]))
    width = mean.shape[1]
    mask = ablation_mask(neuron_order(0, len(paths), width, "per_layer"), 0.5, len(paths), width)

    assert rows[("zero", "0")] == pytest.approx(_with(mod.model, paths, lambda l, h: h, ce), rel=1e-5)
    assert rows[("zero", "1")] == pytest.approx(_with(mod.model, paths, lambda l, h: torch.zeros_like(h), ce), rel=1e-5)
    half = _with(mod.model, paths, lambda l, h: torch.where(mask[l], mean[l], h), ce)
    assert rows[("mean", "0.5")] == pytest.approx(half, rel=1e-5)
    resampled = _with(mod.model, paths, lambda l, h: drawn[l], ce)  # evaluation image i takes drawn row i
    assert rows[("resample:data", "1")] == pytest.approx(resampled, rel=1e-5)
    assert len(counts) > 1  # the layers do see different numbers of tokens


TEXT = ["--data.max_tokens", 112, "--data.calib_tokens", 96, "--data.context_length", 16, "--data.batch_size", 4]


def _masked_by_hand(folder, corpus, paths, context_length, **kwargs):
    """(module, plain CE, CE with every pre-out zeroed, CE with the calibration mean at 50%), in batches of
    4 as the run makes them (Nystromformer's pseudo-inverse scales by a maximum over the whole batch)."""
    mod = MaskedLMAblation(str(folder), **kwargs)
    tokens = 112 if context_length == 16 else 224
    d = MaskedTextData(str(corpus), max_tokens=tokens, calib_tokens=tokens - 16, context_length=context_length)
    mod.connect_data(d)
    d.setup()
    x, labels = d.eval_inputs, d.eval_labels
    batches = lambda ids: [mod.model(input_ids=ids[i : i + 4]).logits for i in range(0, len(ids), 4)]  # noqa: E731

    def ce():
        out = torch.cat(batches(x))
        keep = labels != -100
        return float(F.cross_entropy(out[keep], labels[keep]))

    seen: dict[int, list] = {}
    record = lambda l, h: seen.setdefault(l, []).append(h.reshape(-1, h.shape[-1])) or h  # noqa: E731
    _with(mod.model, paths, record, lambda: batches(d.calib_inputs))
    mean = torch.stack([torch.cat(seen[l]).double().mean(0) for l in range(len(paths))]).float()
    mask = ablation_mask(neuron_order(0, len(paths), mean.shape[1], "per_layer"), 0.5, len(paths), mean.shape[1])
    return (
        mod,
        _with(mod.model, paths, lambda l, h: h, ce),
        _with(mod.model, paths, lambda l, h: torch.zeros_like(h), ce),
        _with(mod.model, paths, lambda l, h: torch.where(mask[l], mean[l], h), ce),
    )


def test_a_check_pass_that_changes_the_model_leaves_it_as_given(capsys, zoo, corpus, tmp_path):
    """BigBird switches itself to full attention for good on the 8-token check pass; the run restores it,
    says so, and scores block-sparse attention on its 16-token windows (equal to a hand hook)."""
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention

    args = _cli(
        "masked", zoo["big_bird"], ["--data.path", corpus, *TEXT], tmp_path, "--ablation.methods", "[zero,mean]"
    )
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "warning: the check forward pass changed the model (bert.attention_type" in out
    assert "restored: the run scores the model as it was loaded" in out
    assert "checked equal to the attention output of the check pass, which ran with bert.attention_type" in out
    rows = {(r["method"], r["fraction"]): float(r["ce"]) for r in read_rows(tmp_path / "run" / "results.csv")}
    paths = [f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    mod, plain, zero, half = _masked_by_hand(zoo["big_bird"], corpus, paths, 16)
    assert mod.model.bert.attention_type == "block_sparse" and mod.model.config.attention_type == "block_sparse"
    assert all(isinstance(layer.attention.self, BigBirdBlockSparseAttention) for layer in mod.model.bert.encoder.layer)
    assert rows[("zero", "0")] == pytest.approx(plain, rel=1e-5)
    assert rows[("zero", "1")] == pytest.approx(zero, rel=1e-5)
    assert rows[("mean", "0.5")] == pytest.approx(half, rel=1e-5)


def test_a_model_of_one_input_length_is_checked_at_that_length(capsys, zoo, corpus, tmp_path):
    """Nystromformer takes 32 tokens only: the 8-token check fails in one line naming --model.check_length;
    with it, its approximated attention cannot be compared to attention weights x values, so the run
    needs --model.allow_unchecked, says what was not checked, and matches a hand hook."""
    text32 = ["--data.path", corpus, "--data.max_tokens", 224, "--data.calib_tokens", 208]
    text32 += ["--data.context_length", 32, "--data.batch_size", 4]
    methods = ("--ablation.methods", "[zero,mean]")
    code, out, err = run(capsys, *_cli("masked", zoo["nystromformer"], text32, tmp_path / "a", *methods))
    assert code == 2 and "pass --model.check_length N and --data.context_length N" in one_line_error(err)
    code, out, err = run(
        capsys, *_cli("masked", zoo["nystromformer"], text32, tmp_path / "b", *methods, "--model.check_length", 32)
    )
    assert code == 2
    assert "could not be checked to receive the attention heads' output" in one_line_error(err)
    assert "--model.allow_unchecked true" in err
    extra = ("--model.check_length", 32, "--model.allow_unchecked", "true")
    code, out, err = run(capsys, *_cli("masked", zoo["nystromformer"], text32, tmp_path / "c", *methods, *extra))
    assert code == 0, err
    assert "all 2 layers not checked against the attention output" in out and "--model.allow_unchecked true" in out
    rows = {(r["method"], r["fraction"]): float(r["ce"]) for r in read_rows(tmp_path / "c" / "run" / "results.csv")}
    paths = [f"nystromformer.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    _, plain, zero, half = _masked_by_hand(
        zoo["nystromformer"], corpus, paths, 32, check_length=32, allow_unchecked=True
    )
    assert rows[("zero", "0")] == pytest.approx(plain, rel=1e-5)
    assert rows[("zero", "1")] == pytest.approx(zero, rel=1e-5)
    assert rows[("mean", "0.5")] == pytest.approx(half, rel=1e-5)


def _mvit():
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    torch.manual_seed(0)
    model = MultiScaleVit(MultiScaleVitCfg(depths=(1, 1), embed_dim=16, num_heads=1), img_size=(32, 32), num_classes=5)
    model.pretrained_cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0, "num_classes": 5, "mean": (0.5,) * 3,
                            "std": (0.5,) * 3, "interpolation": "bilinear"}  # fmt: skip
    return model.eval()


def test_a_hook_place_that_cannot_be_checked_needs_the_user_to_allow_it(image_folder, tmp_path):
    """MViTv2 adds the pooled query to the heads' output before attn.proj: the hooked value differs from
    attention weights x values, so the run refuses, saying what was not checked, unless allowed."""
    import ablate_lit

    with pytest.raises(AblateError, match="could not be checked to receive the attention heads' output: its input "
                       "differs from the attention weights x values"):  # fmt: skip
        VisionAblation.from_model(_mvit(), blocks="stages.0.blocks")
    settings = dict(blocks="stages.0.blocks", methods=["zero"], fractions=[0, 1], seeds=[0], **IMAGES)
    with pytest.raises(AblateError, match=r"allow_unchecked=True to ablate the input of stages\.\*\.blocks\.\*\.attn"):
        ablate_lit.run(_mvit(), str(image_folder), root=tmp_path, trainer={"accelerator": "cpu"}, **settings)
    model = _mvit()
    results = ablate_lit.run(
        model, str(image_folder), root=tmp_path, trainer={"accelerator": "cpu"}, allow_unchecked=True, **settings
    )
    rows = {r["fraction"]: float(r["ce"]) for r in read_rows(results.run_dir / "results.csv")}
    d = ImageData(str(image_folder), **IMAGES)
    VisionAblation.from_model(model, blocks="stages.0.blocks", allow_unchecked=True).connect_data(d)
    d.setup()
    x = torch.stack([d.eval_set[i]["pixel_values"] for i in range(len(d.eval_set))])
    labels = torch.tensor(d.eval_set.labels)
    zero = _with(model, ["stages.0.blocks.0.attn.proj"], lambda l, h: torch.zeros_like(h),
                 lambda: float(F.cross_entropy(model(x), labels)))  # fmt: skip
    assert rows["1"] == pytest.approx(zero, rel=1e-5)


@pytest.mark.parametrize(
    "name,family,pattern",
    [
        (
            "rwkv",
            "CausalLMAblation",
            "RwkvForCausalLM has no attention heads: its layers mix tokens with RwkvSelfAttention",
        ),
        ("mamba", "CausalLMAblation", "MambaForCausalLM has no attention heads: its layers mix tokens with MambaMixer"),
        (
            "recurrent_gemma",
            "CausalLMAblation",
            "RecurrentGemmaForCausalLM is a hybrid: 1 of the 3 layers in model.layers (layer 2) hold softmax "
            "attention (RecurrentGemmaAttention), the others mix tokens with RecurrentGemmaRecurrentBlock there",
        ),
        (
            "squeezebert",
            "MaskedLMAblation",
            "attention (SqueezeBertSelfAttention) projects with Conv1d over channels-first",
        ),
    ],
)
def test_models_without_hookable_attention_are_refused_saying_why(capsys, zoo, corpus, tmp_path, name, family, pattern):
    data = "TextData" if family == "CausalLMAblation" else "MaskedTextData"
    code, out, err = run(
        capsys, "--model", f"ablate_lit.{family}", "--model.name_or_path", zoo[name], "--data", f"ablate_lit.{data}",
        "--data.path", corpus, *TEXT, "--root", tmp_path, "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert code == 2 and pattern in one_line_error(err)


@pytest.mark.slow
def test_head_dim_can_be_stated_where_the_model_names_it_otherwise(capsys, zoo, image_folder, tmp_path):
    """--model.head_dim settles a width the model states under a name ablate_lit does not read."""
    data_args = ["--data.path", image_folder] + [x for k, v in IMAGES.items() for x in (f"--data.{k}", v)]
    base = _cli("vision", zoo["timm-levit"], data_args, tmp_path, "--ablation.methods", "[zero]")
    code, out, err = run(capsys, *base, "--model.head_dim", 8)  # key_dim, not the heads' output width
    assert code == 2 and "receives (2, 4, 32), not [..., 16] (2 heads x 8); pass --model.head_dim N" in one_line_error(
        err
    )
    code, out, err = run(capsys, *base, "--model.head_dim", 16, "--name", "given")
    assert code == 0, err
    assert "3 layers x 2 heads x 16 = 32 neurons" in out


@pytest.mark.slow
def test_a_run_log_holds_one_line_per_step_and_evaluation_and_no_lightning_line(
    capsys, tiny_models, corpus, tmp_path, monkeypatch
):
    """Redirected (not a terminal), a run says each step once as it ends (the text generation of
    resample:generated, its cache, the calibration sweep, the neuron figures), each evaluation once, all
    stamped with the time of day and the run's ETA; Lightning's bars, seed and device lines stay out."""
    args = tiny_args(tiny_models["llama"], corpus, tmp_path, "--ablation.methods", "[mean,resample:generated]")
    code, out, err = run(capsys, *args, "--ablation.seeds", "[0]", "--ablation.fractions", "[0,0.5]")
    assert code == 0, err
    lines = (out + err).split("\n")
    stamped = [line for line in lines if re.match(r"\d\d:\d\d:\d\d ", line)]
    steps = ["calibration statistics: ", "neuron figures: ", "generating text for resample:generated: ",
             "resample cache generated: "]  # fmt: skip
    for step in steps:
        assert sum(step in line for line in stamped) == 1, (step, out)
    evaluations = [line for line in stamped if "% ablated: " in line]
    assert len(evaluations) == 3 and all(re.search(r"\(eta \d+:\d\d\)$", line) for line in evaluations)
    for banner in ("Seed set", "GPU available", "TPU available", "Validation", "Testing", "━", "it/s"):
        assert banner not in out + err, banner
    said = [line for line in lines if line.strip() and not line.startswith(("|", "###", "results:", "curves:"))]
    header = ["run folder: ", "pre-outs: ", "schedule: "]
    assert len(said) == len(header) + 1 + len(steps) + len(evaluations), said  # (+1: loading the model)
    import logging

    from ablate_lit.common import logs

    try:  # Lightning's own lines, on request (its handlers print to the stderr of their import: look at the level)
        code, out, err = run(capsys, *args, "--ablation.seeds", "[0]", "--ablation.fractions", "[0,0.5]", "--verbose",
                             "true", "--name", "v")  # fmt: skip
        assert code == 0 and logging.getLogger("lightning.fabric").level == logging.INFO and logs.lightning_bars()
    finally:
        logs.lightning_voice(False)


def test_the_eta_prices_every_step_ahead_by_what_its_kind_has_cost(monkeypatch):
    """Steps ahead are priced by the seconds per unit their kind took in this run: an evaluation by the
    calibration sweep's forward passes until one has run, text generation by a timed decode step, a fit
    as three forward passes per input; the running step by its own pace."""
    from ablate_lit.common import progress

    now = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    run_ = progress.start()
    works = [
        progress.Work("calibration statistics", "forward", 20),
        progress.Work(progress_generating(), "generate", 50),
        progress.Work("fitting optimal 50% (seed 0)", "fit", 10),
        progress.Work("evaluating mean 50% (seed 0)", "evaluate", 4),
        progress.Work("evaluating mean 100% (seed 0)", "evaluate", 4),
    ]
    assert run_.eta() is None  # no plan yet: no ETA
    run_.plan(works)
    run_.rates.probe("generate", 0.1)
    assert run_.eta() is None  # nothing priced a forward pass yet
    with progress.step("calibration statistics", "forward", 20, "batches") as step:
        now[0] += 5.0
        step.tick(1, 4)  # a quarter in 5 s: 20 s for the sweep, 1 s per input
        assert run_.eta() == pytest.approx(15 + 50 * 0.1 + 10 * 3 + 4 + 4)
        now[0] += 11.0
    assert run_.rates.per_unit("forward") == pytest.approx(16 / 20)
    assert run_.eta() == pytest.approx(50 * 0.1 + 10 * 3 * 0.8 + 4 * 0.8 * 2)
    with progress.step("evaluating mean 50% (seed 0)", "evaluate", 4):
        with progress.step("resample cache random_chars", "forward", 2):  # unplanned, inside: not the evaluation's time
            now[0] += 1.0  # the evaluation's estimate (4 x 0.8 s) does not shrink while the cache is built
            assert run_.eta() == pytest.approx(50 * 0.1 + 10 * 3 * 0.8 + 4 * 0.8 * 2 + (2 * 0.8 - 1))
            now[0] += 29.0
        now[0] += 2.0
    assert run_.rates.per_unit("evaluate") == pytest.approx(0.5)
    assert "evaluating mean 50% (seed 0)" not in [w.what for w in run_.ahead]
    assert run_.eta() == pytest.approx(50 * 0.1 + 10 * 3 * 15 + 4 * 0.5)  # (the cache's sweep priced forward)
    run_.drop("fitting optimal 50% (seed 0)")  # found on disk after all
    assert run_.eta() == pytest.approx(50 * 0.1 + 4 * 0.5)


def progress_generating() -> str:
    from ablate_lit.data.random_inputs import GENERATING

    return GENERATING


def test_on_a_terminal_the_run_is_one_progress_bar_and_lines_print_above_it(monkeypatch, capsys):
    """Where stderr is a terminal the run is one tqdm bar (the step and its count, the share of the run
    done, time so far and ETA); a line the run prints meanwhile goes to stdout whole; the bar is gone
    when no step runs. In a log, a step running longer than ``QUIET_S`` says where it is."""
    import io

    from ablate_lit.common import logs, progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_ = progress.start()
    run_.plan([progress.Work("calibration statistics", "forward", 7), progress.Work("evaluating x", "evaluate", 7)])
    with progress.step("calibration statistics", "forward", 7, "batches") as step:
        step.tick(3, 7)
        logs.say(None, "a line meanwhile")
        monkeypatch.setattr(progress, "REDRAW_S", 0.0)  # (the bar is redrawn at most every REDRAW_S)
        step.tick(4, 7)
        assert run_._bar is not None
    assert run_._bar is not None  # one bar for the whole run, between its steps too
    run_.close()
    assert run_._bar is None
    bar = terminal.getvalue()
    assert "calibration statistics: 3/7 batches" in bar and "4/7" in bar and "so far, eta " in bar and "%|" in bar
    out = capsys.readouterr().out
    assert "a line meanwhile\n" in out and "calibration statistics: 7/7" not in out
    assert "calibration statistics: 4/7 batches, 0:00" in out  # the step's one line as it ends
    monkeypatch.setenv("ABLATE_LIT_PROGRESS", "lines")  # a terminal that asks for lines
    monkeypatch.setattr(progress, "QUIET_S", 0.0)
    with progress.step("calibration statistics", "forward", 7, "batches") as step:
        step.tick(5, 7)
    out = capsys.readouterr().out
    assert re.search(r"^\d\d:\d\d:\d\d calibration statistics: 5/7 batches, 0:00 so far", out, re.M), out


@pytest.mark.slow
def test_a_folder_named_ablate_lit_beside_a_notebook_is_not_imported_instead(tmp_path):
    """Started in the folder above a clone (an ``ablate_lit`` folder without ``__init__.py``), Python
    still imports the installed package, not an empty namespace."""
    (tmp_path / "ablate_lit" / "tests").mkdir(parents=True)
    (tmp_path / "ablate_lit" / "README.md").write_text("a clone\n")
    probe = "import ablate_lit; print(ablate_lit.__file__, callable(ablate_lit.run))"
    out = launch(code=probe, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("__init__.py True"), out.stderr
