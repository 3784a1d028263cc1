"""Randomised inputs whose pre-outs the resample methods use, one row per cached sequence.

Every source yields ``[n, context_length]`` token ids (BOS first where the evaluation windows have
one), so the cache covers every evaluated position. Rows are drawn from seeded generators, hence
identical on every process.
"""

from __future__ import annotations

import string

import torch

from ablate_lit.errors import AblateError

_CHARS = string.ascii_letters + string.digits + string.punctuation + " " * 10 + "\n"


def random_tokens(tokenizer, n: int, length: int, bos: int | None, seed: int) -> torch.Tensor:
    """Token ids drawn uniformly from the tokenizer's vocabulary, special tokens excluded."""
    gen = torch.Generator().manual_seed(seed)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    allowed[special[special < len(tokenizer)]] = False
    pool = allowed.nonzero().squeeze(1)
    body = pool[torch.randint(len(pool), (n, length - (bos is not None)), generator=gen)]
    return _with_bos(body, bos)


def random_chars(tokenizer, n: int, length: int, bos: int | None, seed: int) -> torch.Tensor:
    """Strings of uniformly random printable characters, tokenised and cut to length."""
    gen = torch.Generator().manual_seed(seed)
    body_len = length - (bos is not None)
    rows = []
    for _ in range(n):
        ids: list[int] = []
        while len(ids) < body_len:
            picks = torch.randint(len(_CHARS), (4 * body_len,), generator=gen).tolist()
            ids += tokenizer("".join(_CHARS[i] for i in picks), add_special_tokens=False)["input_ids"]
        rows.append(ids[:body_len])
    return _with_bos(torch.tensor(rows, dtype=torch.long), bos)


@torch.no_grad()
def generated(model, tokenizer, n: int, length: int, bos: int | None, seed: int,
              generator=None, generator_tokenizer=None, batch_size: int = 8) -> torch.Tensor:
    """Text sampled (temperature 1, no top-k/top-p) from the model under test, or from ``generator``.

    With the model under test the sampled ids are used as they are. With another generator the text
    is decoded and re-tokenised by the tested model's tokenizer.
    """
    body_len = length - (bos is not None)
    own = generator is None
    gen_model, gen_tok = (model, tokenizer) if own else (generator, generator_tokenizer)
    start = gen_tok.bos_token_id if gen_tok.bos_token_id is not None else gen_tok.eos_token_id
    if start is None:
        raise AblateError("the generator's tokenizer has neither BOS nor EOS token to start generation; name another generator")
    device = next(gen_model.parameters()).device
    new = body_len if own else 2 * body_len + 16
    rows: list[list[int]] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            prompt = torch.full((b, 1), start, dtype=torch.long, device=device)
            out = gen_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                                     top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                     pad_token_id=start, eos_token_id=None)
            out = out[:, 1:].cpu()
            for seq in out:
                if own:
                    rows.append(seq[:body_len].tolist())
                else:
                    ids = tokenizer(gen_tok.decode(seq, skip_special_tokens=True), add_special_tokens=False)["input_ids"]
                    if len(ids) < body_len:
                        raise AblateError(f"generated text re-tokenises to {len(ids)} < {body_len} tokens; use the tested model as generator")
                    rows.append(ids[:body_len])
    return _with_bos(torch.tensor(rows, dtype=torch.long), bos)


def _with_bos(body: torch.Tensor, bos: int | None) -> torch.Tensor:
    if bos is None:
        return body
    return torch.cat([torch.full((body.shape[0], 1), bos, dtype=torch.long), body], 1)
