"""Read documents (strings) from a hub data set, a local file or a folder, through ``datasets``."""

from __future__ import annotations

import bz2
import itertools
import json
import os
from pathlib import Path
from typing import Iterator

from ablate_lit.common.errors import AblateError
from ablate_lit.common.paths import looks_like_path

BUILDERS = {
    ".txt": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def _is_wiki_dump(path: Path) -> bool:
    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as fh:
            return b"<mediawiki" in fh.read(2048)
    except OSError:
        return False


def _wiki_documents(path: Path) -> Iterator[str]:
    """Plain text of the articles in a MediaWiki XML dump (markup stripped by gensim)."""
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError as exc:
        raise AblateError(
            f"reading the Wikipedia dump '{path}' needs gensim; run: pip install 'ablate_lit[demo]'"
        ) from exc
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as fh:
        for _title, text, _pageid in extract_pages(fh):
            text = filter_wiki(text).strip()
            if text and not text.upper().startswith("#REDIRECT"):
                yield text


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and (p.suffix in BUILDERS or p.suffix in (".bz2", ".xml")))
    if not files:
        raise AblateError(
            f"data folder '{path}' holds no .txt/.md/.json/.jsonl/.csv/.parquet or MediaWiki "
            ".xml(.bz2) files; point ⟨--data.path⟩ at one"
        )
    return files


def iter_documents(
    path: str, text_column: str = "text", name: str | None = None, split: str = "train", streaming: bool | None = None
) -> Iterator[str]:
    """Documents in a fixed order: local files sorted by path, hub data sets in their stored order. From
    Python, ``path`` may also be texts in memory: a list of strings, or a ``datasets`` data set
    (its ``text_column``)."""
    if not isinstance(path, (str, os.PathLike)):
        yield from _in_memory(path, text_column)
        return
    local = Path(os.path.expanduser(path))
    if local.exists():
        for file in _local_files(local):
            if _is_wiki_dump(file):
                yield from _wiki_documents(file)
                continue
            builder = BUILDERS.get(file.suffix)
            if builder is None:
                raise AblateError(
                    f"cannot read '{file}': use .txt, .md, .json(l), .csv, .parquet or a MediaWiki .xml(.bz2) dump"
                )
            yield from _dataset_texts(
                builder,
                text_column,
                str(file),
                split="train",
                data_files=str(file),
                **({"sample_by": "document"} if builder == "text" else {}),
            )
        return
    if looks_like_path(path):
        raise AblateError(f"data file or folder '{path}' not found; fix ⟨--data.path⟩")
    yield from _dataset_texts(
        path, text_column, path, name=name, split=split, streaming=True if streaming is None else streaming
    )


def _in_memory(texts, text_column: str) -> Iterator[str]:
    columns = getattr(texts, "column_names", None)
    if columns is not None:  # a datasets.Dataset or IterableDataset
        if text_column not in columns:
            raise AblateError(
                f"the data set has no column '{text_column}' (columns: {', '.join(columns)}); pass text_column="
            )
        texts = (row[text_column] for row in texts)
    elif isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise AblateError(
            f"text data must be a path, a hub name, a list of strings or a datasets.Dataset, not a "
            f"{type(texts).__name__}"
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise AblateError(f"text {i} is a {type(text).__name__}, not a string; pass a list of strings")
        yield text


def diagnose(file: Path, builder: str) -> str | None:
    """Where a local file that ``datasets`` could not read goes wrong (the first bad line), or None."""
    if builder not in ("text", "json", "csv"):
        return None  # parquet / arrow: binary formats, read by datasets or not at all
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        kind = "binary, not text" if b"\x00" in raw[:8192] else "not UTF-8 text"
        line = raw[: exc.start].count(b"\n") + 1
        return f"'{file}' is {kind} (line {line}); convert it to UTF-8 text or remove it"
    if builder != "json":
        return None
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"'{file}' is not valid JSON (line {exc.lineno}: {exc.msg}); fix the file"
        return None
    for number, line in enumerate(text.splitlines(), 1):
        try:
            if line.strip():
                json.loads(line)
        except json.JSONDecodeError as exc:
            return f"'{file}' line {number} is not valid JSON ({exc.msg}); fix or remove that line"
    return None


def _dataset_texts(builder: str, text_column: str, source: str, **kwargs) -> Iterator[str]:
    """The non-empty texts of ``text_column``, in order; ``source`` names the file or data set in errors."""
    import datasets

    local = Path(kwargs["data_files"]) if "data_files" in kwargs else None
    try:
        ds = datasets.load_dataset(builder, **kwargs)
    except Exception as exc:  # datasets raises many types for "unreadable", "not reachable" and "not found"
        found = diagnose(local, builder) if local is not None else None
        if found:
            raise AblateError(found) from exc
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        if local is not None:
            raise AblateError(f"could not read '{local}' ({reason}); the file may be truncated or corrupt") from exc
        raise AblateError(
            f"could not load data set '{source}' ({reason}); without internet, point ⟨--data.path⟩ at "
            "a local file or folder"
        ) from exc
    columns = ds.column_names if not isinstance(ds.column_names, dict) else next(iter(ds.column_names.values()))
    if columns is not None and text_column not in columns:
        raise AblateError(
            f"'{source}' has no column '{text_column}' (columns: {', '.join(columns)}); set "
            "⟨--data.text_column⟩, or keep files of other layouts out of ⟨--data.path⟩"
        )
    rows = iter(ds)
    for number in itertools.count(1):
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # a streamed data set failing mid-way
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise AblateError(f"could not read row {number} of '{source}' ({reason})") from exc
        text = row[text_column]
        if text is None or text == "":
            continue
        if not isinstance(text, str):
            raise AblateError(
                f"row {number} of '{source}' holds a non-text value ({type(text).__name__}) in column "
                f"'{text_column}'; fix the data or choose another ⟨--data.text_column⟩"
            )
        yield text
