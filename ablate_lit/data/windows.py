"""Where a text DataModule's tokens come from: the documents of a source tokenised into one stream,
or the windows a DataLoader gives (used as they are), each checked as it is read."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ablate_lit.common.errors import AblateError
from ablate_lit.data.sources import iter_documents


def bos_prefix(tokenizer, prepend_bos: bool) -> list[int]:
    """The tokens opening every input: the tokenizer's BOS token (EOS if it has none) when ``prepend_bos``."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [bos] if prepend_bos and bos is not None else []


class WindowDataset(Dataset):
    """Fixed-length token windows; each item carries its index (resampling and DDP bookkeeping)."""

    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.windows[i], "index": i}


def given_windows(data, n_windows: int) -> torch.Tensor:
    """Windows from ``data.path``, a DataLoader of token ids (batches of ``input_ids`` [batch, context_length], as
    tensors or dicts), used as they are: no special token is added."""
    from torch.utils.data import RandomSampler

    if isinstance(data.path.sampler, RandomSampler):
        raise AblateError(
            "the DataLoader shuffles, so every call would evaluate other windows (and never resume); "
            "pass it with shuffle=False"
        )
    parts, vocab = [], len(data.tokenizer)
    for batch in data.path:
        if isinstance(batch, dict):
            if "input_ids" not in batch:
                raise AblateError(
                    f"the DataLoader's batches have no 'input_ids' (keys: {', '.join(map(str, batch))}); "
                    "give token windows as input_ids [batch, context_length]"
                )
            if "attention_mask" in batch and not bool(torch.as_tensor(batch["attention_mask"]).bool().all()):
                raise AblateError(
                    "the DataLoader's windows are padded (attention_mask has zeros), but every position "
                    "of a window is scored; give full windows, or pass the texts instead"
                )
        ids = batch["input_ids"] if isinstance(batch, dict) else batch[0] if isinstance(batch, (list, tuple)) else batch
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] != data.context_length:
            raise AblateError(
                f"a DataLoader of text must give input_ids of shape [batch, context_length "
                f"{data.context_length}], got {getattr(ids, 'shape', type(ids).__name__)}; set context_length"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise AblateError(f"the DataLoader's input_ids are {ids.dtype}; token ids must be integers")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
            raise AblateError(
                f"the DataLoader gives token id {bad}, outside the tokenizer's {vocab} ids; use ids of "
                "the model's own tokenizer"
            )
        parts.append(ids.long().cpu())
        if sum(len(p) for p in parts) >= n_windows:
            break
    windows = torch.cat(parts) if parts else torch.zeros(0, data.context_length, dtype=torch.long)
    if len(windows) < n_windows:
        raise AblateError(
            f"the DataLoader gives {len(windows)} windows but {n_windows} are needed ({data.n_eval_windows} "
            f"evaluation + {data.n_calib_windows} calibration); lower max_tokens or calib_tokens"
        )
    return windows[:n_windows]


def token_stream(data, needed: int) -> torch.Tensor:
    """The documents of ``data.path``, tokenised and joined with EOS, until ``needed`` tokens."""
    tok, eos = data.tokenizer, data.tokenizer.eos_token_id
    ids: list[int] = []
    batch: list[str] = []

    def flush():
        for seq in tok(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(seq)
            if eos is not None:
                ids.append(eos)
        batch.clear()

    for doc in iter_documents(data.path, data.text_column, data.name, data.split, data.streaming):
        batch.append(doc)
        if len(batch) == 32:
            flush()
            if len(ids) >= needed:
                break
    if batch:
        flush()
    if len(ids) < needed:
        have_eval = max(0, len(ids) // data.body_length - data.n_calib_windows) * data.body_length
        what = (
            f"the data holds {len(ids)} tokens but {needed} are needed ({data.max_tokens} evaluation + "
            f"{data.calib_tokens} calibration tokens in windows of {data.context_length})"
        )
        if have_eval >= data.body_length:
            fix = f"lower ⟨--data.max_tokens⟩ (at most ~{have_eval} fit) or ⟨--data.calib_tokens⟩, or use more data"
        elif len(ids) >= 2 * data.body_length:
            fix = (
                "lower ⟨--data.calib_tokens⟩ and ⟨--data.max_tokens⟩ (together at most "
                f"~{len(ids) // data.body_length * data.body_length} "
                "fit), or use more data"
            )
        else:
            fix = "use more data (or a shorter ⟨--data.context_length⟩)"
        raise AblateError(f"{what}; {fix}")
    return torch.tensor(ids[:needed], dtype=torch.long)


class SpecialTokens:
    """The special tokens around every text input of a DataModule with a ``tokenizer`` and a
    ``prepend_bos`` setting: the BOS token first (``prefix``), nothing last (``suffix``)."""

    tokenizer = None
    prepend_bos: bool = True

    @property
    def prefix(self) -> list[int]:
        """Special tokens opening every input."""
        return bos_prefix(self.tokenizer, self.prepend_bos)

    @property
    def suffix(self) -> list[int]:
        """Special tokens closing every input."""
        return []
