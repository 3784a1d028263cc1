"""The sequences a task is scored on: each row's answer (and distractor) teacher-forced after its
prompt, padded at the end to one length, and the same with its counterfactual prompt."""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset

from ablate_lit.common.labels import IGNORE_INDEX
from ablate_lit.data.task_rows import EncodedRow


class TaskSequences(Dataset):
    """The scored sequences of a task split. Item i: ``input_ids`` [T] (padded at the end), ``labels``
    [T] (the continuation's tokens where they are predicted, -100 elsewhere), ``valid`` [T] (not
    padding), ``index`` (i: the resample row it reads), ``row`` (the task row it scores), ``kind``
    (0: the answer, 1: the distractor), ``start`` (the position predicting its first token) and
    ``distractor`` (a one-token distractor read at ``start``, else -100)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["index"])

    def __getitem__(self, i: int) -> dict:
        return {k: v[i] for k, v in self.tensors.items()}

    def subset(self, items: torch.Tensor) -> "TaskSequences":
        """Those items, re-indexed 0..n-1 (rows keep their numbers)."""
        picked = {k: v[items] for k, v in self.tensors.items()}
        picked["index"] = torch.arange(len(items))
        return TaskSequences(picked)

    def fingerprint(self) -> str:
        parts = [self.tensors[k].numpy().tobytes() for k in ("input_ids", "labels", "row", "kind", "distractor")]
        return hashlib.sha1(b"".join(parts)).hexdigest()[:16]


def sequences(rows: list[EncodedRow], prefix: list[int], pad: int, length: int, counterfactual=False, distractors=True):
    """The answer sequence of every row, then (where some distractor has several tokens, and with
    ``distractors``) the distractor sequence of every row that has one; with ``counterfactual``, the
    same sequences with each row's counterfactual prompt in place of its prompt (positions and indices
    equal)."""
    multi = distractors and any(r.distractor is not None and len(r.distractor) > 1 for r in rows)
    items = [(i, 0, r.answer) for i, r in enumerate(rows)]
    if multi:
        items += [(i, 1, r.distractor) for i, r in enumerate(rows) if r.distractor is not None]
    n = len(items)
    t = {
        "input_ids": torch.full((n, length), pad, dtype=torch.long),
        "labels": torch.full((n, length), IGNORE_INDEX, dtype=torch.long),
        "valid": torch.zeros(n, length, dtype=torch.bool),
        "index": torch.arange(n),
        "row": torch.tensor([i for i, _, _ in items], dtype=torch.long),
        "kind": torch.tensor([k for _, k, _ in items], dtype=torch.long),
        "start": torch.zeros(n, dtype=torch.long),
        "distractor": torch.full((n,), IGNORE_INDEX, dtype=torch.long),
    }
    for s, (i, kind, continuation) in enumerate(items):
        prompt = rows[i].counterfactual if counterfactual else rows[i].prompt
        ids = prefix + prompt + continuation[:-1]
        start = len(prefix) + len(prompt) - 1
        t["input_ids"][s, : len(ids)] = torch.tensor(ids)
        t["valid"][s, : len(ids)] = True
        t["labels"][s, start : start + len(continuation)] = torch.tensor(continuation)
        t["start"][s] = start
        if not multi and kind == 0 and rows[i].distractor is not None:
            t["distractor"][s] = rows[i].distractor[0]
    return TaskSequences(t)


def first_contexts(seqs: TaskSequences) -> TaskSequences:
    """``seqs`` with ``valid`` kept only at the first occurrence of each context: a position whose
    tokens up to and including it repeat those of an earlier sequence gives a causal LM the same
    activations, so it is one observation, not another (the BOS position of every row, a template's
    shared opening)."""
    ids, valid = seqs.tensors["input_ids"].tolist(), seqs.tensors["valid"].clone()
    nodes: dict[tuple[int, int], int] = {}  # (context node, next token) -> node: a trie of the contexts seen
    for s, row in enumerate(ids):
        node = -1
        for t, token in enumerate(row):
            if not valid[s, t]:
                break
            key = (node, token)
            if key in nodes:
                valid[s, t] = False
            else:
                nodes[key] = len(nodes)
            node = nodes[key]
    return TaskSequences({**seqs.tensors, "valid": valid})
