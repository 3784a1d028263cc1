"""Task rows: read from a file, a hub data set or memory, checked, and tokenised into the sequences
a causal LM is scored on.

A row holds a ``prompt`` and its ``answer``, optionally a ``distractor`` (the wrong answer the
logit difference is taken against) and a ``counterfactual`` prompt (the same template with the
information the task needs changed). The answer is scored by teacher forcing: the model reads
prefix + prompt + answer[:-1] and each answer token is predicted at the position before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ablate_lit.common.errors import AblateError
from ablate_lit.common.paths import looks_like_path
from ablate_lit.data.sources import BUILDERS, diagnose

TABULAR = {suffix: builder for suffix, builder in BUILDERS.items() if builder != "text"}
"""The file types rows are read from (those of ``data.sources`` that hold columns)."""


@dataclass
class EncodedRow:
    """One row in tokens (prompt ids without the prefix of special tokens)."""

    prompt: list[int]
    answer: list[int]
    distractor: list[int] | None
    counterfactual: list[int] | None


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def continuation(tokenizer, prompt: str, prompt_ids: list[int], text: str) -> list[int] | None:
    """The tokens ``text`` adds after the prompt when the two are tokenised together, or None when
    the prompt's own tokens change (the text is not a continuation in tokens)."""
    full = _tokens(tokenizer, prompt + text)
    if full[: len(prompt_ids)] != prompt_ids or len(full) == len(prompt_ids):
        return None
    return full[len(prompt_ids) :]


def encode(tokenizer, row: dict) -> EncodedRow | str:
    """The row in tokens, or why it cannot be scored (a phrase for the error that names the row)."""
    prompt, answer = row.get("prompt"), row.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        return "has an empty prompt" if isinstance(prompt, str) or prompt is None else "has a prompt that is not text"
    if not isinstance(answer, str) or not answer:
        return "has no answer"
    prompt_ids = _tokens(tokenizer, prompt)
    answer_ids = continuation(tokenizer, prompt, prompt_ids, answer)
    if answer_ids is None:
        return (
            f"has an answer {answer!r} that does not continue the prompt in tokens (tokenised together, the "
            "prompt's last tokens change); end the prompt before a space and start the answer with it"
        )
    distractor = row.get("distractor") or None
    distractor_ids = None
    if distractor is not None:
        distractor_ids = continuation(tokenizer, prompt, prompt_ids, str(distractor))
        if distractor_ids is None:
            return f"has a distractor {distractor!r} that does not continue the prompt in tokens"
    counterfactual = row.get("counterfactual") or None
    counterfactual_ids = None
    if counterfactual is not None:
        counterfactual_ids = _tokens(tokenizer, str(counterfactual))
        if len(counterfactual_ids) != len(prompt_ids):
            return (
                f"has a counterfactual prompt of {len(counterfactual_ids)} tokens and a prompt of "
                f"{len(prompt_ids)}; counterfactual values replace position by position, so give a "
                "counterfactual of the same token length (e.g. names of equal token length)"
            )
    return EncodedRow(prompt_ids, answer_ids, distractor_ids, counterfactual_ids)


def encode_all(tokenizer, rows: list[dict], source: str) -> list[EncodedRow]:
    """Every row in tokens; the first that cannot be scored raises an error naming it (its number in
    ``source``, from 1)."""
    encoded = []
    for number, row in enumerate(rows, 1):
        found = encode(tokenizer, row)
        if isinstance(found, str):
            raise AblateError(f"row {number} of {source} {found}; fix or remove that row")
        encoded.append(found)
    some = [r.counterfactual is not None for r in encoded]
    if any(some) and not all(some):
        raise AblateError(
            f"row {some.index(False) + 1} of {source} has no counterfactual prompt but others do; give every "
            "row one, or none"
        )
    return encoded


def problem(tokenizer):
    """A function: why a row cannot be scored with ``tokenizer``, or None."""

    def why(row: dict) -> str | None:
        found = encode(tokenizer, row)
        return found if isinstance(found, str) else None

    return why


def read_task_rows(path, columns: dict[str, str], name: str | None, split: str) -> tuple[list[dict], str]:
    """(rows with the keys prompt, answer, distractor, counterfactual; a name of the source for
    errors). ``columns`` maps those keys to the source's column names. ``path``: a .jsonl .json .csv
    .parquet file, a hub data set, a list of dicts, or a ``datasets.Dataset``."""
    if isinstance(path, (str, os.PathLike)):
        local = Path(os.path.expanduser(path))
        if local.is_file():
            builder = TABULAR.get(local.suffix)
            if builder is None:
                raise AblateError(f"cannot read task rows from '{local}': use .jsonl, .json, .csv or .parquet")
            _check_file(local, builder)
            source, records = f"'{local.name}'", _load(builder, str(local), data_files=str(local), split="train")
        elif looks_like_path(str(path)) or local.exists():
            raise AblateError(f"task file '{path}' not found; fix ⟨--data.path⟩ (or name a shipped task: ioi)")
        else:
            source, records = f"'{path}'", _load(str(path), str(path), name=name, split=split)
    elif hasattr(path, "column_names") or isinstance(path, (list, tuple)):
        source, records = "the task rows", path
    else:
        raise AblateError(
            f"task rows must be a file, a hub data set, a list of dicts or a datasets.Dataset, not a "
            f"{type(path).__name__}"
        )
    rows = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise AblateError(f"row {number} of {source} is a {type(record).__name__}, not a row of named columns")
        for key in ("prompt", "answer") if number == 1 else ():
            if columns[key] not in record:
                raise AblateError(
                    f"{source} has no column '{columns[key]}' for the {key}s (columns: "
                    f"{', '.join(map(str, record))}); name it with ⟨--data.{key}_column⟩"
                )
        rows.append({key: _text(record.get(column)) for key, column in columns.items()})
    if not rows:
        raise AblateError(f"{source} holds no task rows; give rows with a prompt and an answer")
    return rows, source


def _check_file(local: Path, builder: str) -> None:
    """A task file that is empty, not UTF-8 or not valid JSON, refused before ``datasets`` reads it (it
    reads bytes that are not UTF-8 and fails only when a row is taken, and an empty file as StopIteration)."""
    found = diagnose(local, builder)
    if found:
        raise AblateError(found)
    if builder != "parquet" and not local.read_bytes().strip():
        raise AblateError(f"'{local.name}' is empty; give task rows with a prompt and an answer")


def _text(value):
    """A cell as text: numbers as they are written (a CSV column of numeric answers is read as numbers),
    a missing cell (None, NaN) as None."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        return None if value != value else (str(int(value)) if value.is_integer() else repr(value))
    return str(value) if isinstance(value, int) else value


def _load(builder: str, source: str, **kwargs):
    import datasets

    try:
        return datasets.load_dataset(builder, **kwargs)
    except Exception as exc:  # datasets raises many types for unreadable, unreachable and missing data
        local = Path(kwargs["data_files"]) if "data_files" in kwargs else None
        found = diagnose(local, builder) if local is not None else None  # the first bad line, as for text
        if found:
            raise AblateError(found) from exc
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise AblateError(
            f"could not read task rows from '{source}' ({reason}); without internet, point ⟨--data.path⟩ at "
            "a local .jsonl/.csv file"
        ) from exc
