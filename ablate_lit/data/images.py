"""Image classification data: a deterministic subset of a labelled image data set."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ablate_lit.data.sampler import cached_loader, make_loader
from ablate_lit.errors import AblateError, check, check_seed
from ablate_lit.families.base import looks_like_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".JPEG"}


def _decode(value, where: str):
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


class ImageData(L.LightningDataModule):
    """``max_images`` evaluation and ``calib_images`` calibration images, disjoint, chosen with ``seed``.

    Sources: a hub data set (e.g. ``ILSVRC/imagenet-1k``, split ``validation``, streamed), a local
    folder of class sub-folders (labels = sorted folder names, as ImageNet synset folders sort into
    the standard class order), or a local data set saved with ``save_to_disk`` or as parquet/arrow
    with image and label columns. Images are preprocessed by the model's own transform.
    """

    def __init__(self, path: str, split: str = "validation", name: str | None = None, image_column: str = "image",
                 label_column: str = "label", max_images: int = 1000, calib_images: int = 1000, batch_size: int | str = 32,
                 num_workers: int = 0, seed: int = 0, streaming: bool | None = None):
        """
        Args:
            path: hub data set, local image folder (class sub-folders), or a local data set (save_to_disk, parquet);
                from Python also a datasets.Dataset, or a list of {image: PIL image, label: int} rows.
            split: split of a hub data set.
            name: configuration name of a hub data set.
            image_column: column holding the images.
            label_column: column holding the integer class labels.
            max_images: evaluation images.
            calib_images: calibration images (disjoint from the evaluation images).
            batch_size: images per batch, or auto (the largest power of two that fits on the accelerator).
            num_workers: DataLoader workers.
            seed: seed of the shuffle that picks and splits the images.
            streaming: stream a hub data set (default: yes).
        """
        super().__init__()
        check(max_images >= 1, f"data.max_images must be positive, got {max_images}")
        check_seed(seed, "data.seed")
        check(calib_images >= 1, f"data.calib_images must be positive, got {calib_images}")
        check(batch_size == "auto" or (isinstance(batch_size, int) and batch_size >= 1),
              f"data.batch_size must be a positive integer or auto, got {batch_size}")
        self.path, self.split, self.name, self.streaming = path, split, name, streaming
        self.image_column, self.label_column = image_column, label_column
        self.max_images, self.calib_images, self.batch_size, self.num_workers, self.seed = max_images, calib_images, batch_size, num_workers, seed
        self.preprocess = None
        self.n_classes = None
        self.eval_set = self.calib_set = None
        self._ids: dict[str, str] = {}

    def connect(self, preprocess, n_classes: int) -> None:
        self.preprocess, self.n_classes = preprocess, n_classes

    def _load(self):
        import datasets

        if not isinstance(self.path, (str, os.PathLike)):  # from Python: a data set in memory
            if isinstance(self.path, list):
                if not self.path or not all(isinstance(r, dict) for r in self.path):
                    raise AblateError(f"a list of images must hold {{'{self.image_column}': PIL image, "
                                      f"'{self.label_column}': int}} rows" + ("" if self.path else ", and it is empty"))
                return datasets.Dataset.from_list(self.path)
            if not hasattr(self.path, "column_names"):
                raise AblateError(f"image data must be a path, a hub name, a datasets.Dataset or a list of "
                                  f"{{'{self.image_column}': image, '{self.label_column}': int}} rows, not a {type(self.path).__name__}")
            return self.path
        local = Path(os.path.expanduser(self.path))
        try:
            if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "state.json").exists()):
                ds = datasets.load_from_disk(str(local))
                ds = ds[self.split] if isinstance(ds, datasets.DatasetDict) else ds
            elif local.is_dir():
                if not any(p.suffix in IMAGE_SUFFIXES for p in local.rglob("*")):
                    raise AblateError(f"image folder '{local}' holds no images; it needs one sub-folder of images per class")
                classes = [p for p in local.iterdir() if p.is_dir() and any(f.suffix in IMAGE_SUFFIXES for f in p.rglob("*"))]
                if len(classes) < 2:
                    raise AblateError(f"image folder '{local}' has {len(classes)} class sub-folder(s) with images; it needs one "
                                      "sub-folder per class (their sorted names give the labels), e.g. ImageNet's synset folders")
                ds = datasets.load_dataset("imagefolder", data_dir=str(local), split="train")
            elif local.is_file():
                builder = {".parquet": "parquet", ".arrow": "arrow"}.get(local.suffix)
                if builder is None:
                    raise AblateError(f"cannot read '{local}': use an image folder, a parquet/arrow file or a save_to_disk folder")
                ds = datasets.load_dataset(builder, data_files=str(local), split="train")
            elif looks_like_path(self.path):
                raise AblateError(f"data file or folder '{self.path}' not found; fix --data.path")
            else:
                ds = datasets.load_dataset(self.path, self.name, split=self.split,
                                           streaming=True if self.streaming is None else self.streaming)
        except AblateError:
            raise
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise AblateError(f"could not load data set '{self.path}' ({reason}); without internet, download it and point "
                              "--data.path at a local image folder (one sub-folder per class) or a save_to_disk folder") from exc
        return ds

    def setup(self, stage: str | None = None) -> None:
        if self.eval_set is not None:
            return
        import datasets

        check(self.preprocess is not None, "ImageData needs the model's preprocessing: call connect(preprocess, n_classes) first")
        ds = self._load()
        columns = ds.column_names or []
        if ds.features and isinstance(ds.features.get(self.image_column), datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))  # decoded below, naming a bad file
        for col, flag in ((self.image_column, "--data.image_column"), (self.label_column, "--data.label_column")):
            if columns and col not in columns:
                raise AblateError(f"data set has no column '{col}' (columns: {', '.join(columns)}); set {flag}")
        names = getattr(ds.features.get(self.label_column), "names", None) if ds.features else None
        if names is not None and len(names) != self.n_classes:
            raise AblateError(f"the data has {len(names)} classes but the model predicts {self.n_classes}; "
                              "use data labelled in the model's label space (e.g. ImageNet-1k for an ImageNet classifier)")
        needed = self.max_images + self.calib_images
        if hasattr(ds, "__len__"):
            if len(ds) < needed:
                raise AblateError(f"the data holds {len(ds)} images but {needed} are needed; lower --data.max_images "
                                  f"or --data.calib_images")
            order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(self.seed))[:needed].tolist()
            rows = [ds[i] for i in order]
        else:  # streamed: the first `needed` images, then a seeded split
            rows = [row for _, row in zip(range(needed), ds)]
            if len(rows) < needed:
                raise AblateError(f"the data holds {len(rows)} images but {needed} are needed; lower --data.max_images")
            rows = [rows[i] for i in torch.randperm(needed, generator=torch.Generator().manual_seed(self.seed)).tolist()]
        labels = []
        for r in rows:
            label = r[self.label_column]
            if isinstance(label, bool) or not isinstance(label, (int, float)) or int(label) != label:
                raise AblateError(f"label {label!r} is not an integer class index; the '{self.label_column}' column must "
                                  "hold the model's class numbers")
            labels.append(int(label))
        bad = [l for l in labels if not 0 <= l < self.n_classes]
        if bad:
            raise AblateError(f"label {bad[0]} is outside the model's {self.n_classes} classes; the data's label space does not "
                              "match the model's")
        digest, images = hashlib.sha1(), []
        for i, (row, label) in enumerate(zip(rows, labels)):
            image, raw = _decode(row[self.image_column], f"{i} of '{self.path}'" if isinstance(self.path, (str, os.PathLike))
                                 else f"{i} of the data set")
            images.append(image)
            digest.update(hashlib.sha1(raw).digest() + f"{image.size}:{label}".encode())  # every byte of every image
        self._ids = {"all": digest.hexdigest()[:16]}
        self.eval_set = ImageDataset(images[: self.max_images], labels[: self.max_images], self.preprocess)
        self.calib_set = ImageDataset(images[self.max_images:], labels[self.max_images:], self.preprocess)

    def fingerprint(self, which: str) -> str:
        return f"{self._ids['all']}-{which}-{self.max_images}-{self.calib_images}-{self.seed}"

    def positions(self) -> None:
        """Positions per input: known only once the model has seen an image (patches + prefix tokens)."""
        return None

    def shape_key(self) -> dict:
        return {"preprocess": repr(self.preprocess)}

    def describe(self, which: str) -> str:
        return f"{len(self.calib_set if which == 'calibration' else self.eval_set)} images"

    def _loader(self, ds) -> DataLoader:
        return make_loader(ds, self.batch_size, self.num_workers)

    def calibration_sample(self, n: int, seed: int) -> ImageDataset:
        """``n`` calibration images (never evaluation ones), indexed 0..n-1: resample:data's inputs."""
        available = len(self.calib_set)
        check(n <= available, f"resample:data draws {n} rows from {available} calibration images; lower "
                              f"--ablation.n_resample to at most {available} or raise --data.calib_images")
        rows = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return ImageDataset([self.calib_set.images[i] for i in rows], [self.calib_set.labels[i] for i in rows],
                            self.preprocess)

    def calibration_subset(self, rows: torch.Tensor | None = None) -> ImageDataset:
        """The calibration images (``rows`` of them), indexed 0..n-1 (optimal ablation fits on them)."""
        if rows is None:
            return self.calib_set
        rows = rows.tolist()
        return ImageDataset([self.calib_set.images[i] for i in rows], [self.calib_set.labels[i] for i in rows],
                            self.preprocess)

    def eval_dataset(self) -> ImageDataset:
        return self.eval_set

    def test_dataloader(self) -> DataLoader:
        return cached_loader(self, lambda: self._loader(self.eval_set))

    def val_dataloader(self) -> DataLoader:
        """The calibration split (the calibration pass runs as a validation epoch)."""
        return self._loader(self.calib_set)
