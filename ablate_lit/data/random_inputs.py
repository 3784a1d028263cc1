"""Randomised token inputs whose pre-outs the resample methods use, one row per cached sequence.

Every source yields ``[n, length]`` token ids laid out like the evaluation windows (the same
special tokens first and last), so the cache covers every evaluated position. Rows are drawn from
seeded generators, hence identical on every process. ``text_inputs`` gives a text DataModule's
inputs of any source (``TextData.random_inputs``).
"""

from __future__ import annotations

import string
from importlib import resources

import torch

from ablate_lit.common import progress
from ablate_lit.common.errors import AblateError
from ablate_lit.common.progress import GENERATION_BATCH
from ablate_lit.common.words import counted
from ablate_lit.data.windows import WindowDataset

_CHARS = string.ascii_letters + string.digits + string.punctuation + " " * 10 + "\n"


GENERATING = "generating text for resample:generated"
"""The step of the run that writes the text of resample:generated (``common.progress``)."""


def generation_steps(n: int, length: int, prefix: list[int], suffix: list[int], own: bool) -> int:
    """Decode steps to write ``n`` rows of ``generated`` (``own``: the generator is the tested model)."""
    body_len = _body_len(length, prefix, suffix)
    new = body_len if own else 2 * body_len + 16
    return -(-n // GENERATION_BATCH) * new


def _wrap(rows: list[list[int]] | torch.Tensor, prefix: list[int], suffix: list[int]) -> torch.Tensor:
    body = torch.as_tensor(rows, dtype=torch.long)
    n = body.shape[0]
    parts = [
        torch.tensor([prefix] * n, dtype=torch.long).view(n, -1),
        body,
        torch.tensor([suffix] * n, dtype=torch.long).view(n, -1),
    ]
    return torch.cat(parts, 1)


def _body_len(length: int, prefix: list[int], suffix: list[int]) -> int:
    return length - len(prefix) - len(suffix)


def random_tokens(tokenizer, n: int, length: int, prefix: list[int], suffix: list[int], seed: int) -> torch.Tensor:
    """Token ids drawn uniformly from the tokenizer's vocabulary, special tokens excluded."""
    gen = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    allowed[special[special < len(tokenizer)]] = False
    pool = allowed.nonzero().squeeze(1)
    body = pool[torch.randint(len(pool), (n, _body_len(length, prefix, suffix)), generator=gen)]
    return _wrap(body, prefix, suffix)


def _text_rows(tokenizer, n: int, body_len: int, next_text) -> list[list[int]]:
    rows = []
    for i in range(n):
        ids: list[int] = []
        while len(ids) < body_len:
            ids += tokenizer(next_text(i), add_special_tokens=False)["input_ids"]
        rows.append(ids[:body_len])
    return rows


def random_chars(tokenizer, n: int, length: int, prefix: list[int], suffix: list[int], seed: int) -> torch.Tensor:
    """Strings of uniformly random printable characters, tokenised and cut to length."""
    gen = torch.Generator().manual_seed(seed)
    body_len = _body_len(length, prefix, suffix)

    def text(_):
        return "".join(_CHARS[i] for i in torch.randint(len(_CHARS), (4 * body_len,), generator=gen).tolist())

    return _wrap(_text_rows(tokenizer, n, body_len, text), prefix, suffix)


def builtin_sample(tokenizer, n: int, length: int, prefix: list[int], suffix: list[int], seed: int) -> torch.Tensor:
    """Rows cut from the English sample text shipped with ablate_lit, each from a seeded offset."""
    words = resources.files("ablate_lit.data").joinpath("sample.txt").read_text().split()
    gen = torch.Generator().manual_seed(seed)
    body_len = _body_len(length, prefix, suffix)

    def text(_):
        start = int(torch.randint(len(words), (1,), generator=gen))
        return " ".join(words[start:] + words[:start])

    return _wrap(_text_rows(tokenizer, n, body_len, text), prefix, suffix)


@torch.no_grad()
def generated(
    tokenizer,
    n: int,
    length: int,
    prefix: list[int],
    suffix: list[int],
    seed: int,
    generator,
    generator_tokenizer,
    batch_size: int = GENERATION_BATCH,
) -> torch.Tensor:
    """Text sampled (temperature 1, no top-k/top-p) from a causal ``generator``.

    When the generator is the model under test (same tokenizer object) the sampled ids are used as
    they are; otherwise the text is decoded and re-tokenised by the tested model's tokenizer.
    """
    body_len = _body_len(length, prefix, suffix)
    own = generator_tokenizer is tokenizer
    start = (
        generator_tokenizer.bos_token_id
        if generator_tokenizer.bos_token_id is not None
        else generator_tokenizer.eos_token_id
    )
    if start is None:
        raise AblateError(
            "the generator's tokenizer has neither BOS nor EOS token to start generation; name another generator"
        )
    device = next(generator.parameters()).device
    new = body_len if own else 2 * body_len + 16
    rows: list[list[int]] = []
    steps = -(-n // batch_size) * new
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with progress.step(
            GENERATING, "generate", steps, "tokens", detail=f"{counted(n, 'row')} of {counted(new, 'token')}"
        ) as step:
            counter = _Counter(step, n * new)
            torch.manual_seed(seed)
            for i in range(0, n, batch_size):
                b = min(batch_size, n - i)
                counter.before, counter.rows = i * new, b
                prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
                for seq in _sample(generator, prompt, new, start, counter):
                    if own:
                        rows.append(seq[:body_len].tolist())
                        continue
                    ids = tokenizer(
                        generator_tokenizer.decode(seq, skip_special_tokens=True), add_special_tokens=False
                    )["input_ids"]
                    if len(ids) < body_len:
                        raise AblateError(
                            f"generated text re-tokenises to {len(ids)} < {body_len} tokens; name another generator"
                        )
                    rows.append(ids[:body_len])
    return _wrap(rows, prefix, suffix)


def _sample(generator, prompt: torch.Tensor, new: int, start: int, beat) -> torch.Tensor:
    """``new`` tokens sampled after each row of ``prompt`` (temperature 1, no top-k/top-p, no early end)."""
    from transformers import StoppingCriteriaList

    out = generator.generate(
        prompt,
        stopping_criteria=StoppingCriteriaList([beat]),
        attention_mask=torch.ones_like(prompt),
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=new,
        min_new_tokens=new,
        pad_token_id=start,
        eos_token_id=None,
    )
    return out[:, 1:].cpu()


class _Counter:
    """A stopping criterion that never stops: it counts the tokens generated into the run's progress
    step (``common.progress``), so that the bar and the ETA move while the text is written."""

    def __init__(self, step, total: int):
        self.step, self.all, self.before, self.rows = step, total, 0, 1

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.step.tick(self.before + self.rows * (input_ids.shape[1] - 1), self.all)  # the prompt is 1 token
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def text_inputs(data, source: str, n: int, seed: int, generator=None) -> torch.utils.data.Dataset:
    """``n`` inputs of ``source`` laid out like ``data``'s windows (a connected text DataModule), indexed
    0..n-1: random_tokens, random_chars, generated (text written by ``generator()``: (model, tokenizer),
    or None for the built-in English sample), data (calibration windows) or, for a task, counterfactual
    (each evaluated sequence's counterfactual)."""
    if source == "data":
        return data.calibration_sample(n, seed)
    if source == "counterfactual":
        return data.counterfactual_inputs()  # a task's: row by row, the evaluated sequences' own
    args = (data.tokenizer, n, data.context_length, data.prefix, data.suffix, seed)
    if source == "random_tokens":
        return WindowDataset(random_tokens(*args))
    if source == "random_chars":
        return WindowDataset(random_chars(*args))
    if source != "generated":
        raise ValueError(source)
    writer = generator() if generator is not None else None
    if writer is None:
        return WindowDataset(builtin_sample(*args))
    return WindowDataset(generated(*args, generator=writer[0], generator_tokenizer=writer[1]))
