"""Reading labelled images: from a data set in memory, a hub name, a folder of class sub-folders or a
saved data set; every image decoded whole (a truncated file is refused naming it)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ablate_lit.common.errors import AblateError
from ablate_lit.common.paths import looks_like_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".JPEG"}


def decode(value, where: str):
    """(PIL image, its bytes) from a data set's image value; a file that cannot be decoded whole is
    refused naming it (a truncated JPEG fails here, not in the middle of a run)."""
    from PIL import Image

    path = value.get("path") if isinstance(value, dict) else None
    try:
        if isinstance(value, Image.Image):
            image, raw = value, None
        elif isinstance(value, dict) and value.get("bytes"):
            raw = value["bytes"]
            image = Image.open(io.BytesIO(raw))
        elif path:
            raw = Path(path).read_bytes()
            image = Image.open(io.BytesIO(raw))
        else:
            raise TypeError(f"a {type(value).__name__}, not an image")
        image.load()
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise AblateError(f"image {path or where} cannot be read ({reason}); remove or replace it") from exc
    return image, raw if raw is not None else image.tobytes()


class ImageDataset(Dataset):
    def __init__(self, images: list, labels: list[int], preprocess):
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.preprocess(self.images[i].convert("RGB")), "label": self.labels[i], "index": i}


def load_images(path, name: str | None, split: str, streaming: bool | None, image_column: str, label_column: str):
    """The data set ``path`` names (or is, from Python): a ``datasets`` data set, streamed or not."""
    if not isinstance(path, (str, os.PathLike)):  # from Python: a data set in memory
        return _in_memory(path, image_column, label_column)
    return _from_path(path, name, split, streaming)


def _in_memory(path, image_column: str, label_column: str):
    import datasets

    if isinstance(path, list):
        if not path or not all(isinstance(r, dict) for r in path):
            raise AblateError(
                f"a list of images must hold {{'{image_column}': PIL image, "
                f"'{label_column}': int}} rows" + ("" if path else ", and it is empty")
            )
        return datasets.Dataset.from_list(path)
    if not hasattr(path, "column_names"):
        raise AblateError(
            f"image data must be a path, a hub name, a datasets.Dataset or a list of "
            f"{{'{image_column}': image, '{label_column}': int}} rows, not a "
            f"{type(path).__name__}"
        )
    return path


def _from_path(path, name: str | None, split: str, streaming: bool | None):
    import datasets

    local = Path(os.path.expanduser(path))
    try:
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "state.json").exists()):
            ds = datasets.load_from_disk(str(local))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        elif local.is_dir():
            if not any(p.suffix in IMAGE_SUFFIXES for p in local.rglob("*")):
                raise AblateError(
                    f"image folder '{local}' holds no images; it needs one sub-folder of images per class"
                )
            classes = [
                p for p in local.iterdir() if p.is_dir() and any(f.suffix in IMAGE_SUFFIXES for f in p.rglob("*"))
            ]
            if len(classes) < 2:
                raise AblateError(
                    f"image folder '{local}' has {len(classes)} class sub-folder(s) with images; it needs one "
                    "sub-folder per class (their sorted names give the labels), e.g. ImageNet's synset folders"
                )
            ds = datasets.load_dataset("imagefolder", data_dir=str(local), split="train")
        elif local.is_file():
            builder = {".parquet": "parquet", ".arrow": "arrow"}.get(local.suffix)
            if builder is None:
                raise AblateError(
                    f"cannot read '{local}': use an image folder, a parquet/arrow file or a save_to_disk folder"
                )
            ds = datasets.load_dataset(builder, data_files=str(local), split="train")
        elif looks_like_path(path):
            raise AblateError(f"data file or folder '{path}' not found; fix ⟨--data.path⟩")
        else:
            ds = datasets.load_dataset(path, name, split=split, streaming=True if streaming is None else streaming)
    except AblateError:
        raise
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise AblateError(
            f"could not load data set '{path}' ({reason}); without internet, download it and point "
            "⟨--data.path⟩ at a local image folder (one sub-folder per class) or a save_to_disk folder"
        ) from exc
    return ds


def pick_rows(ds, needed: int, seed: int) -> list:
    """``needed`` rows of ``ds`` in a seeded random order (a streamed data set: its first ``needed``, shuffled)."""
    if hasattr(ds, "__len__"):
        if len(ds) < needed:
            raise AblateError(
                f"the data holds {len(ds)} images but {needed} are needed; lower ⟨--data.max_images⟩ "
                f"or ⟨--data.calib_images⟩"
            )
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:needed].tolist()
        rows = [ds[i] for i in order]
    else:  # streamed: the first `needed` images, then a seeded split
        rows = [row for _, row in zip(range(needed), ds)]
        if len(rows) < needed:
            raise AblateError(f"the data holds {len(rows)} images but {needed} are needed; lower ⟨--data.max_images⟩")
        rows = [rows[i] for i in torch.randperm(needed, generator=torch.Generator().manual_seed(seed)).tolist()]
    return rows


def class_labels(rows: list, label_column: str, n_classes: int) -> list[int]:
    """The rows' labels, checked to be integer classes of the model's."""
    labels = []
    for r in rows:
        label = r[label_column]
        if isinstance(label, bool) or not isinstance(label, (int, float)) or int(label) != label:
            raise AblateError(
                f"label {label!r} is not an integer class index; the '{label_column}' column must "
                "hold the model's class numbers"
            )
        labels.append(int(label))
    bad = [l for l in labels if not 0 <= l < n_classes]
    if bad:
        raise AblateError(
            f"label {bad[0]} is outside the model's {n_classes} classes; the data's label space does not "
            "match the model's"
        )
    return labels
