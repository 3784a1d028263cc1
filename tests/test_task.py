"""Task data: answer accuracy, answer CE, logit difference and KL, counterfactual resampling and mean,
optimal ablation with the KL objective, against hand-written hooks and scoring; bad rows; shipped tasks."""

from __future__ import annotations

import json
import random
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import cli, launch, one_line_error
from transformers import AutoModelForCausalLM, AutoTokenizer

import ablate_lit
from ablate_lit import AblateError, TaskData
from ablate_lit.data.task_rows import problem
from ablate_lit.data.tasks import generate
from ablate_lit.stats.task_metrics import TaskScores
from ablate_lit.store.folder import read_rows
from ablate_lit.testing.tiny import WORDS

N_ROWS, CALIB = 26, 10


def _length(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def make_rows(tok, n: int = N_ROWS, seed: int = 0, fixed: int | None = None) -> list[dict]:
    """Rows of random words: answers and distractors of one to three words (so of several tokens),
    counterfactuals that swap a word for one of equal token length. ``fixed``: every prompt that
    many tokens long (a fixed template)."""
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 8))]
        prompt = " ".join(words).capitalize()
        if fixed is not None and _length(tok, prompt) != fixed:
            continue
        answer = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        distractor = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 2)))
        same = [w for w in WORDS if _length(tok, " " + w) == _length(tok, " " + words[-1]) and w != words[-1]]
        if not same:
            continue
        counterfactual = " ".join(words[:-1] + [rng.choice(same)]).capitalize()
        row = {"prompt": prompt, "answer": answer, "distractor": distractor, "counterfactual": counterfactual}
        if problem(tok)(row) is None:
            rows.append(row)
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def llama(tiny_models):
    path = tiny_models["llama"]
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return path, model, AutoTokenizer.from_pretrained(path)


def projections(model):
    return [layer.self_attn.o_proj for layer in model.model.layers]


class Hand:
    """Hand-written pre-hooks on every o_proj and hand scoring of one sequence at a time (no padding)."""

    def __init__(self, model, tok):
        self.model, self.tok, self.bos = model, tok, tok.bos_token_id

    def ids(self, prompt: str, continuation: str) -> tuple[list[int], list[int], int]:
        p = self.tok(prompt, add_special_tokens=False)["input_ids"]
        full = self.tok(prompt + continuation, add_special_tokens=False)["input_ids"]
        c = full[len(p) :]
        return [self.bos] + p + c[:-1], c, len(p)  # input, continuation, first predicting position

    @torch.no_grad()
    def pre_outs(self, ids: list[int]) -> list[torch.Tensor]:
        seen = []
        handles = [
            o.register_forward_pre_hook(lambda m, a: seen.append(a[0][0].clone())) for o in projections(self.model)
        ]
        try:
            self.model(torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        return seen  # per layer [pos, width]

    @torch.no_grad()
    def log_probs(self, ids: list[int], replace=None) -> torch.Tensor:
        """log-softmax [pos, vocab] with each o_proj's input replaced by ``replace(layer, x)``."""
        handles = []
        if replace is not None:
            for layer, o in enumerate(projections(self.model)):
                handles.append(o.register_forward_pre_hook(lambda m, a, _l=layer: (replace(_l, a[0]),)))
        try:
            return F.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
        finally:
            for h in handles:
                h.remove()

    def row(self, row: dict, replace=None, replace_distractor=None) -> dict:
        """accuracy, answer CE, logit difference and KL at the answer positions of one row."""
        ids, answer, start = self.ids(row["prompt"], row["answer"])
        ablated, clean = self.log_probs(ids, replace), self.log_probs(ids)
        at = torch.arange(start, start + len(answer))
        lp = ablated[at, answer].sum()
        kl = (clean[at].exp() * (clean[at] - ablated[at])).sum(-1).mean()
        d_ids, distractor, _ = self.ids(row["prompt"], row["distractor"])
        d_lp = self.log_probs(d_ids, replace_distractor or replace)[
            torch.arange(start, start + len(distractor)), distractor
        ]
        correct = bool((ablated[at].argmax(-1) == torch.tensor(answer)).all())
        return {"top1": float(correct), "ce": float(-lp), "logit_diff": float(lp - d_lp.sum()), "kl": float(kl)}


def split(rows, calib=CALIB, seed=0):
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[:calib]], [rows[i] for i in order[calib:]]


def mean_over(hand, rows, prompt_key: str) -> list[torch.Tensor]:
    """Per layer, the mean pre-out over the positions of the rows' answer sequences, each context (the
    tokens up to a position) once."""
    per_layer, contexts = None, set()
    for row in rows:
        ids, _, _ = hand.ids(row[prompt_key], row["answer"]) if prompt_key == "prompt" else _cf_ids(hand, row)
        new = [t for t in range(len(ids)) if tuple(ids[: t + 1]) not in contexts]
        contexts |= {tuple(ids[: t + 1]) for t in new}
        seen = [s[new] for s in hand.pre_outs(ids)]
        per_layer = [[s] for s in seen] if per_layer is None else [p + [s] for p, s in zip(per_layer, seen)]
    return [torch.cat(p).double().mean(0).float() for p in per_layer]


def _cf_ids(hand, row, key: str = "answer"):
    _, continuation, _ = hand.ids(row["prompt"], row[key])
    cf = hand.tok(row["counterfactual"], add_special_tokens=False)["input_ids"]
    return [hand.bos] + cf + continuation[:-1], continuation, len(cf)


def averaged(per_row: list[dict]) -> dict:
    return {k: sum(r[k] for r in per_row) / len(per_row) for k in per_row[0]}


def close(row: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert float(row[key]) == pytest.approx(value, rel=2e-5, abs=2e-6), key


@pytest.mark.slow
def test_task_metrics_and_counterfactual_methods_equal_hand_hooks(llama, tmp_path):
    path, model, tok = llama
    rows = make_rows(tok)
    assert any(_length(tok, r["answer"]) > 1 for r in rows) and any(_length(tok, r["distractor"]) > 1 for r in rows)
    results = ablate_lit.run(
        str(path), write_jsonl(tmp_path / "task.jsonl", rows), task=True, root=tmp_path, name="run",
        calib_rows=CALIB, batch_size=4, methods=["zero", "mean", "mean:counterfactual", "resample:counterfactual"],
        fractions=[0.0, 1.0], seeds=[0], trainer={"accelerator": "cpu"}, verbose=False,
    )  # fmt: skip
    got = {(r["method"], str(r["pct"])): r for r in results.rows()}
    hand, (calib, evaluated) = Hand(model, tok), split(rows)

    close(got[("zero", "0")], averaged([hand.row(r) for r in evaluated]))
    close(got[("zero", "0")], {"kl": 0.0})
    close(got[("zero", "100")], averaged([hand.row(r, lambda l, x: torch.zeros_like(x)) for r in evaluated]))
    for method, key in (("mean", "prompt"), ("mean:counterfactual", "counterfactual")):
        mean = mean_over(hand, calib, key)
        expected = averaged([hand.row(r, lambda l, x: mean[l].expand_as(x)) for r in evaluated])
        close(got[(method, "100")], expected)

    def counterfactual(row, key):
        recorded = hand.pre_outs(_cf_ids(hand, row, key)[0])
        return lambda l, x: recorded[l][None]

    expected = [hand.row(r, counterfactual(r, "answer"), counterfactual(r, "distractor")) for r in evaluated]
    close(got[("resample:counterfactual", "100")], averaged(expected))
    assert int(got[("zero", "100")]["n_tokens"]) == len(evaluated) and got[("zero", "0")]["task"] == "task"

    stored = read_rows(results.run_dir, windows=True)[0]
    windows = next(r for r in stored if r["method"] == "resample:counterfactual" and str(r["pct"]) == "100")
    assert windows["_windows"]["logit_diff"] == pytest.approx([e["logit_diff"] for e in expected], rel=1e-4, abs=1e-5)
    summary = (results.run_dir / "summary.md").read_text()
    assert "answer accuracy (%)" in summary and "logit difference answer - distractor" in summary


@pytest.mark.slow
def test_one_token_answers_read_the_distractor_at_the_answer_position(llama, tmp_path):
    path, model, tok = llama
    single = [w for w in WORDS if _length(tok, " " + w) == 1]
    rows = [
        {**r, "answer": " " + single[i % len(single)], "distractor": " " + single[(i + 3) % len(single)]}
        for i, r in enumerate(make_rows(tok, seed=1))
    ]
    rows = [r for r in rows if problem(tok)(r) is None]
    results = ablate_lit.run(
        str(path), write_jsonl(tmp_path / "one.jsonl", rows), task=True, root=tmp_path, name="one",
        calib_rows=CALIB, batch_size=3, methods=["zero"], fractions=[0.0, 1.0], seeds=[0],
        trainer={"accelerator": "cpu"}, verbose=False,
    )  # fmt: skip
    got = {str(r["pct"]): r for r in results.rows()}
    hand, (_, evaluated) = Hand(model, tok), split(rows)
    clean = [hand.row(r) for r in evaluated]
    close(got["0"], averaged(clean))
    ids, answer, start = hand.ids(evaluated[0]["prompt"], evaluated[0]["answer"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, start]
    d = tok(evaluated[0]["distractor"], add_special_tokens=False)["input_ids"][0]
    assert clean[0]["logit_diff"] == pytest.approx(float(logits[answer[0]] - logits[d]), rel=1e-4)  # a logit difference
    close(got["100"], averaged([hand.row(r, lambda l, x: torch.zeros_like(x)) for r in evaluated]))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prompt": ""}, "row 3 of 'bad.jsonl' has an empty prompt"),
        ({"answer": None}, "row 3 of 'bad.jsonl' has no answer"),
        (
            {"prompt": "The city of ", "answer": "the"},
            "row 3 of 'bad.jsonl' has an answer 'the' that does not continue",
        ),
        ({"counterfactual": "The city of the river was in the"}, "row 3 of 'bad.jsonl' has a counterfactual prompt of"),
    ],
)
def test_a_bad_task_row_is_named_in_one_line(llama, tmp_path, change, message):
    path, _, tok = llama
    rows = make_rows(tok, n=12)
    rows[2] = {**rows[2], **change}
    with pytest.raises(AblateError) as err:
        ablate_lit.run(
            str(path), write_jsonl(tmp_path / "bad.jsonl", rows), task=True, root=tmp_path, calib_rows=4,
            trainer={"accelerator": "cpu"}, verbose=False,
        )  # fmt: skip
    text = str(err.value)
    assert "\n" not in text and text.startswith(message) and "; " in text, text


def _task_file(tmp_path, tok, kind: str):
    """A task file with one fault of ``kind`` (the rows otherwise the good ones of ``make_rows``)."""
    rows = make_rows(tok, n=12)
    if kind == "longer than the model":
        long = "The city of the river " * 40
        rows[4] = {**rows[4], "prompt": long + rows[4]["prompt"], "counterfactual": long + rows[4]["counterfactual"]}
        return write_jsonl(tmp_path / "long.jsonl", rows)
    if kind == "not UTF-8":
        path = tmp_path / "latin1.jsonl"
        path.write_bytes("".join(json.dumps({**r, "prompt": r["prompt"] + " caf\u00e9"}, ensure_ascii=False) + "\n"
                                 for r in rows).encode("latin-1"))  # fmt: skip
        return str(path)
    if kind == "empty":
        (tmp_path / "empty.jsonl").write_text("\n")
        return str(tmp_path / "empty.jsonl")
    if kind == "no answer column":
        return write_jsonl(tmp_path / "renamed.jsonl", [{"prompt": r["prompt"], "target": r["answer"]} for r in rows])
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("longer than the model", r"row 5 of 'long.jsonl' needs \d+ positions .*beyond the model's 128; shorten its"),
        ("not UTF-8", r"'.*latin1.jsonl' is not UTF-8 text \(line 1\); convert it to UTF-8"),
        ("empty", r"'empty.jsonl' is empty; give task rows with a prompt and an answer"),
        ("no answer column", r"'renamed.jsonl' has no column 'answer' for the answers .*--data.answer_column"),
    ],
)
def test_a_task_file_gets_the_checks_text_gets(llama, tmp_path, capsys, kind, message):
    path, _, tok = llama
    args = ["test", "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", path, "--data",
            "ablate_lit.TaskData", "--data.path", _task_file(tmp_path, tok, kind), "--data.calib_rows", "4",
            "--ablation.methods", "[zero]", "--ablation.fractions", "[0,1]", "--ablation.seeds", "[0]",
            "--root", tmp_path / "runs", "--trainer.accelerator", "cpu"]  # fmt: skip
    code, _, err = cli(capsys, *args)
    assert code == 2 and re.search(message, one_line_error(err)), err[-2000:]


def test_numeric_answers_in_a_csv_file_are_read_as_written(llama, tmp_path):
    path, _, tok = llama
    rows = make_rows(tok, n=12)
    csv_path = tmp_path / "rows.csv"
    lines = ["prompt,answer"] + [f"{r['prompt'].replace(',', '')} number,{i}" for i, r in enumerate(rows)]
    csv_path.write_text("\n".join(lines) + "\n")
    from ablate_lit.data.task_rows import read_task_rows

    read, _ = read_task_rows(str(csv_path), {"prompt": "prompt", "answer": "answer"}, None, "train")
    assert [r["answer"] for r in read] == [str(i) for i in range(12)]


def test_task_objective_is_the_answer_ce_or_the_kl_at_the_answer_positions():
    torch.manual_seed(0)
    n, length, vocab = 3, 5, 11
    labels = torch.full((n, length), -100)
    labels[0, 2:4], labels[1, 3], labels[2, 1:4] = torch.tensor([1, 2]), 3, torch.tensor([4, 5, 6])
    batch = {"row": torch.tensor([0, 1, 0]), "kind": torch.tensor([0, 0, 1]), "start": torch.tensor([2, 3, 1]),
             "index": torch.arange(3),
             "distractor": torch.tensor([-100, 7, -100])}  # fmt: skip
    logits, reference = torch.randn(n * length, vocab), torch.randn(n * length, vocab)
    ce, count = TaskScores.objective(batch, logits, labels.reshape(-1))
    lp = F.log_softmax(logits.view(n, length, vocab), -1)
    assert float(ce) == pytest.approx(float(-(lp[0, 2, 1] + lp[0, 3, 2] + lp[1, 3, 3])), rel=1e-6) and int(count) == 2
    kl, _ = TaskScores.objective(batch, logits, labels.reshape(-1), reference)
    p = F.log_softmax(reference.view(n, length, vocab), -1)
    per_pos = (p.exp() * (p - lp)).sum(-1)
    assert float(kl) == pytest.approx(float(per_pos[0, 2:4].mean() + per_pos[1, 3]), rel=1e-6)  # distractors not fitted

    scores = TaskScores(2, n_sequences=3, longest=3)
    assert scores.kept_reference() is None
    scores.score(batch, logits, labels.reshape(-1), reference)
    out = scores.compute()
    scores.end_epoch()
    kept = scores.kept_reference()
    assert kept is not None  # later points read the unablated log-probabilities back
    scores.reset()
    scores.score(batch, logits, labels.reshape(-1), kept)
    assert float(scores.compute()["kl"]) == pytest.approx(float(out["kl"]), rel=1e-7)
    row0_distractor = lp[2, 1, 4] + lp[2, 2, 5] + lp[2, 3, 6]
    expected = [float(lp[0, 2, 1] + lp[0, 3, 2] - row0_distractor), float(lp[1, 3, 3] - lp[1, 3, 7])]
    assert out["windows"]["logit_diff"].tolist() == pytest.approx(expected, rel=1e-6)
    assert float(out["kl"]) == pytest.approx(float(per_pos[0, 2:4].mean() + per_pos[1, 3]) / 2, rel=1e-6)


@pytest.mark.slow
def test_optimal_kl_per_neuron_and_per_position_equal_hand_hooks_with_the_fitted_constants(llama, tmp_path):
    path, model, tok = llama
    rows = make_rows(tok, n=22, seed=2, fixed=6)
    results = ablate_lit.run(
        str(path), write_jsonl(tmp_path / "fixed.jsonl", rows), task=True, root=tmp_path, name="opt",
        calib_rows=12, batch_size=4, methods=["mean", "optimal:kl", "optimal:kl+position"], fractions=[1.0],
        seeds=[0], optimal_epochs=3, optimal_batch_size=3, optimal_lr=0.2, trainer={"accelerator": "cpu"},
        verbose=False,
    )  # fmt: skip
    got = {r["method"]: r for r in results.rows() if str(r["pct"]) == "100"}
    fits = [torch.load(f, weights_only=False) for f in sorted((tmp_path / ".calibration_cache").glob("optimal-*.pt"))]
    by_dim = {fit["values"].dim(): fit for fit in fits}
    assert set(by_dim) == {2, 3}
    hand, (_, evaluated) = Hand(model, tok), split(rows, calib=12)
    for method, fit in (("optimal:kl", by_dim[2]), ("optimal:kl+position", by_dim[3])):
        values = fit["values"]
        assert fit["best_loss"] < fit["init_loss"] and "held_out_kl" in fit["history"][0]
        if values.dim() == 2:
            expected = averaged([hand.row(r, lambda l, x: values[l].expand_as(x)) for r in evaluated])
        else:
            expected = averaged(
                [hand.row(r, lambda l, x: values[l][None, : x.shape[1]].expand_as(x)) for r in evaluated]
            )
        close(got[method], expected)
    assert float(got["optimal:kl"]["kl"]) < float(got["mean"]["kl"])  # on held-out rows too, in this case
    longest = max(max(_length(tok, r["prompt"] + r[k]) for k in ("answer", "distractor")) for r in rows)
    assert values.shape[1] == 1 + longest - 1  # BOS + the longest prompt and continuation, but its last token

    with pytest.raises(AblateError, match="fixed-template task"):
        ablate_lit.run(
            str(path), write_jsonl(tmp_path / "varied.jsonl", make_rows(tok, n=14)), task=True, root=tmp_path,
            calib_rows=6, methods=["optimal:position"], trainer={"accelerator": "cpu"}, verbose=False,
        )  # fmt: skip


@pytest.mark.slow
def test_every_schedule_runs_on_task_data(llama, tmp_path):
    path, model, tok = llama
    rows = make_rows(tok, n=18, seed=3)
    task = write_jsonl(tmp_path / "s.jsonl", rows)
    common = dict(task=True, root=tmp_path, calib_rows=6, batch_size=4, trainer={"accelerator": "cpu"}, verbose=False)
    each = ablate_lit.run(str(path), task, name="each", methods=["zero", "resample:counterfactual"], unit="head",
                          schedule="each", **common)  # fmt: skip
    hand, (_, evaluated) = Hand(model, tok), split(rows, calib=6)
    head = next(r for r in each.rows() if r.get("target") == "L1.H2" and r["method"] == "zero")

    def zero_head(layer, x):
        return torch.cat([x[..., :16], torch.zeros_like(x[..., 16:24]), x[..., 24:]], -1) if layer == 1 else x

    close(head, averaged([hand.row(r, zero_head) for r in evaluated]))
    assert len([r for r in each.rows() if r.get("target") not in (None, "-")]) == 2 * 2 * 4  # methods x layers x heads

    for name, settings in (
        ("heads", {"unit": "head", "fractions": [0.0, 0.5]}),
        ("layers", {"layers": [-1], "fractions": [0.0, 1.0]}),
        ("order", {"order": "std:desc", "fractions": [0.0, 0.5]}),
        ("mlp", {"site": "mlp", "fractions": [0.0, 0.5]}),
    ):
        rows_of = ablate_lit.run(str(path), task, name=name, methods=["mean", "resample:counterfactual"], seeds=[0],
                                 **settings, **common).rows()  # fmt: skip
        assert {r["method"] for r in rows_of} == {"mean", "resample:counterfactual"}, name
        assert all(r["task"] == "s" and r["logit_diff"] != "-" for r in rows_of), name
    last = {str(r["pct"]): r for r in rows_of if r["method"] == "mean"}
    assert float(last["50"]["kl"]) > 0 == float(last["0"]["kl"])


def test_the_shipped_tasks_are_built_from_their_templates_for_the_tokenizer(llama):
    _, _, tok = llama
    check = problem(tok)
    ioi = generate("ioi", tok, 40, 0, check)
    assert ioi == generate("ioi", tok, 40, 0, check) and ioi != generate("ioi", tok, 40, 1, check)
    orders = set()
    for row in ioi:
        io, subject = row["answer"].strip(), row["distractor"].strip()
        words = row["prompt"].replace(",", " ").replace(".", " ").split()
        assert words.count(io) == 1 and words.count(subject) == 2 and check(row) is None
        assert io not in row["counterfactual"] and subject not in row["counterfactual"]
        orders.add(words.index(io) < words.index(subject))
    assert orders == {True, False}  # ABBA and BABA
    for row in generate("greater_than", tok, 40, 0, check):
        start = int(re.search(r"year \d\d(\d\d) ", row["prompt"])[1])
        assert int(row["answer"]) == start + 1 and int(row["distractor"]) == start - 1
        assert re.search(r"year \d\d01 ", row["counterfactual"]) and check(row) is None

    data = TaskData("greater_than", task_size=30, calib_rows=10)
    data.connect(tok)
    data.setup()
    assert (
        data.n_rows == 20
        and data.has_counterfactual
        and "20 rows of the greater_than task" in data.describe("evaluation")
    )
    with pytest.raises(AblateError, match="unknown shipped task 'iou'"):
        generate("iou", tok, 4, 0, check)
    missing = TaskData("missing.jsonl")
    missing.connect(tok)
    with pytest.raises(AblateError, match="task file 'missing.jsonl' not found"):
        missing.setup()


def test_statistics_on_generic_text_instead_of_the_task_rows(llama, corpus, tmp_path, capsys):
    path, model, tok = llama
    rows = make_rows(tok, n=16, seed=4)
    results = ablate_lit.run(
        str(path), write_jsonl(tmp_path / "g.jsonl", rows), task=True, root=tmp_path, name="generic",
        calib_rows=6, calibration_text=str(corpus), calib_tokens=400, batch_size=4, methods=["mean"],
        fractions=[1.0], seeds=[0], trainer={"accelerator": "cpu"},
    )  # fmt: skip
    said = capsys.readouterr().out.split("calibration statistics: ")[1].split("\n")[0]
    assert "windows of" in said  # the run says which
    data = TaskData(
        write_jsonl(tmp_path / "g.jsonl", rows), calib_rows=6, calibration_text=str(corpus), calib_tokens=400
    )
    data.connect(tok)
    data.setup()
    windows = data._text.calib_windows
    assert windows.shape[1] == data.length and "generic text" in data.describe("calibration")
    hand = Hand(model, tok)
    seen = [hand.pre_outs(w.tolist()) for w in windows]
    mean = [torch.cat([s[layer] for s in seen]).double().mean(0).float() for layer in range(len(seen[0]))]
    _, evaluated = split(rows, calib=6)
    row = next(r for r in results.rows() if str(r["pct"]) == "100")
    close(row, averaged([hand.row(r, lambda l, x: mean[l].expand_as(x)) for r in evaluated]))


def test_each_context_counts_once_in_the_statistics():
    from ablate_lit.data.task_sequences import TaskSequences, first_contexts

    ids = torch.tensor([[0, 5, 6, 7], [0, 5, 6, 8], [0, 5, 9, 7], [0, 5, 6, 7]])
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    seqs = TaskSequences({"input_ids": ids, "valid": valid, "index": torch.arange(4)})
    kept = first_contexts(seqs).tensors["valid"]
    seen, expected = set(), torch.zeros_like(valid)
    for s in range(4):
        for t in range(4):
            if valid[s, t] and tuple(ids[s, : t + 1].tolist()) not in seen:
                seen.add(tuple(ids[s, : t + 1].tolist()))
                expected[s, t] = True
    assert torch.equal(kept, expected) and int(kept.sum()) == 4 + 0 + 2 + 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_score_every_task_row_once_and_as_one_does(llama, tmp_path):

    path, _, tok = llama
    task = write_jsonl(tmp_path / "ddp.jsonl", make_rows(tok, n=17, seed=5))  # 11 evaluated rows: 6 + 5
    rows = {}
    for strategy in ("single", "ddp"):
        argv = [
            "--model", "ablate_lit.CausalLMAblation", "--model.name_or_path", path, "--data", "ablate_lit.TaskData",
            "--data.path", task, "--data.calib_rows", 6, "--data.batch_size", 3, "--ablation.methods",
            "[zero,mean,resample:counterfactual]", "--ablation.fractions", "[0,0.5]", "--ablation.seeds", "[0]",
            "--root", tmp_path / strategy, "--name", "run", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false",
        ]  # fmt: skip
        if strategy == "ddp":
            argv += ["--trainer.devices", 2, "--trainer.strategy", "ddp"]
        proc = launch("test", *argv)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows[strategy] = sorted(read_rows(tmp_path / strategy / "run")[0], key=lambda r: (r["method"], r["fraction"]))
    assert len(rows["single"]) == len(rows["ddp"]) == 6
    for a, b in zip(rows["single"], rows["ddp"], strict=True):
        assert (a["method"], a["fraction"]) == (b["method"], b["fraction"]) and a["n_tokens"] == b["n_tokens"] == 11
        for key in ("ce", "logit_diff", "kl"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), key


def test_a_model_and_task_rows_in_memory(llama, tmp_path):
    _, model, tok = llama
    rows = make_rows(tok, n=14, seed=6)
    results = ablate_lit.run(
        model, rows, tokenizer=tok, task=True, root=tmp_path, name="memory", calib_rows=4, methods=["zero"],
        fractions=[0.0], seeds=[0], trainer={"accelerator": "cpu"}, verbose=False,
    )  # fmt: skip
    (row,) = results.rows()
    close(row, averaged([Hand(model, tok).row(r) for r in split(rows, calib=4)[1]]))
    assert row["task"] == "task"
    with pytest.raises(AblateError, match="task=True scores a causal LM's answers"):
        ablate_lit.run(model, rows, tokenizer=tok, task=True, family="masked_lm", root=tmp_path, verbose=False)


@pytest.mark.slow
def test_task_attribution_equals_hand_gradients_of_the_logit_difference(llama, tmp_path):
    """On task rows the sweep attributes the logit difference: per neuron, the sum over positions of
    (v - a) * d(logit difference)/da, taken through both the answer's and the distractor's sequences
    (a multi-token distractor is its own forward pass), averaged over the evaluated rows."""
    from ablate_lit.stats.attribution import unit_estimates

    path, model, tok = llama
    single = [w for w in WORDS if _length(tok, " " + w) == 1]
    rows = [
        r if i % 2 else {**r, "distractor": " " + single[i % len(single)]} for i, r in enumerate(make_rows(tok, 16, 5))
    ]
    rows = [r for r in rows if problem(tok)(r) is None]
    assert any(_length(tok, r["distractor"]) > 1 for r in rows) and any(
        _length(tok, r["distractor"]) == 1 for r in rows
    )
    ablate_lit.run(
        str(path), write_jsonl(tmp_path / "a.jsonl", rows), task=True, root=tmp_path, name="run", calib_rows=6,
        batch_size=4, methods=["zero", "mean"], schedule="attribution", attribution_top_k=1, attribution_sample=1,
        trainer={"accelerator": "cpu"}, verbose=False,
    )  # fmt: skip
    stats = torch.load(next((tmp_path / ".calibration_cache").glob("stats-*.pt")), weights_only=False)
    sums = torch.load(tmp_path / "run" / "attribution.pt", weights_only=False)["sums"]
    assert set(sums) == {"ce", "logit_diff"}
    hand, (_, evaluated) = Hand(model, tok), split(rows, calib=6)
    values = {"zero": torch.zeros_like(stats["mean"]), "mean": stats["mean"].float()}
    n_layers, width = values["zero"].shape
    expected = {m: torch.zeros(n_layers * width, dtype=torch.float64) for m in values}
    for row in evaluated:
        for key, sign in (("answer", 1.0), ("distractor", -1.0)):
            ids, continuation, start = hand.ids(row["prompt"], row[key])
            deltas, kept = [], []

            def add(layer, x, deltas=deltas, kept=kept):
                deltas.append(torch.zeros_like(x, requires_grad=True))
                kept.append(x.detach())
                return x + deltas[-1]

            handles = [
                o.register_forward_pre_hook(lambda m, a, _l=layer: (add(_l, a[0]),))
                for layer, o in enumerate(projections(model))
            ]
            try:
                logq = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
            finally:
                for h in handles:
                    h.remove()
            at = torch.arange(start, start + len(continuation))
            grads = torch.autograd.grad(sign * logq[at, continuation].sum(), deltas)
            for method, v in values.items():
                terms = [((v[layer] - a[0]) * g[0]).sum(0).double() for layer, (a, g) in enumerate(zip(kept, grads))]
                expected[method] += torch.cat(terms)
    for method, v in expected.items():
        got = unit_estimates(sums["logit_diff"][method], sums["logit_diff"]["count"], width, 1, list(range(n_layers)))
        torch.testing.assert_close(got, v / len(evaluated), rtol=1e-4, atol=1e-6, msg=method)
