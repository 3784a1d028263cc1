"""--data.batch_size auto: the search, with an accelerator's out-of-memory simulated."""

from __future__ import annotations

import pytest
import torch
from helpers import data, module, run_rows, tiny_args

from ablate_lit import AblateError
from ablate_lit.runner.batch_size import CPU_DEFAULT, find_batch_size


def oom_above(mod, limit):
    forward = mod.logits_and_labels

    def patched(batch):
        if batch["input_ids"].shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(batch)

    mod.logits_and_labels = patched


def test_search_keeps_the_largest_fitting_power_of_two_with_headroom(tiny_models, corpus):
    mod = module(tiny_models["llama"])
    d = data(corpus, mod, max_tokens=600)  # 40 windows
    dataset = d.eval_dataset()
    oom_above(mod, 20)
    assert find_batch_size(mod, dataset, "cuda") == 8  # 16 fits, 32 does not; half of 16 as headroom
    oom_above(mod, 0)
    with pytest.raises(AblateError, match="not even one input fits"):
        find_batch_size(mod, dataset, "cuda")


def test_everything_fits_and_cpu_uses_the_default(tiny_models, corpus):
    mod = module(tiny_models["llama"])
    dataset = data(corpus, mod, max_tokens=60).eval_dataset()  # 4 windows
    assert find_batch_size(mod, dataset, "cuda") == 4
    assert find_batch_size(mod, dataset, "cpu") == min(CPU_DEFAULT, 4)


@pytest.mark.slow
def test_auto_batch_size_through_the_cli_gives_the_same_results(capsys, tiny_models, corpus, tmp_path):
    rows = {}
    for bs in ("4", "auto"):
        out, rows[bs] = run_rows(
            capsys,
            *tiny_args(tiny_models["llama"], corpus, tmp_path / bs),
            "--data.batch_size",
            bs,
            "--ablation.methods",
            "[zero,peak]",
        )
    assert "batch size: 8 (found automatically)" in out
    for a, b in zip(rows["4"], rows["auto"]):
        assert a["n_tokens"] == b["n_tokens"] and float(a["ce"]) == pytest.approx(float(b["ce"]), rel=1e-5)
