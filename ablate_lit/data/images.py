"""Image classification data: a deterministic subset of a labelled image data set."""

from __future__ import annotations

import hashlib
import os

import lightning as L
import torch
from torch.utils.data import DataLoader

from ablate_lit.common.errors import AblateError, check, check_batch_size, check_seed
from ablate_lit.common.words import counted
from ablate_lit.data.image_files import ImageDataset, class_labels, decode, load_images, pick_rows
from ablate_lit.data.sampler import cached_loader, make_loader


class ImageData(L.LightningDataModule):
    """``max_images`` evaluation and ``calib_images`` calibration images, disjoint, chosen with ``seed``.

    Sources: a hub data set (e.g. ``ILSVRC/imagenet-1k``, split ``validation``, streamed), a local
    folder of class sub-folders (labels = sorted folder names, as ImageNet synset folders sort into
    the standard class order), or a local data set saved with ``save_to_disk`` or as parquet/arrow
    with image and label columns. Images are preprocessed by the model's own transform.
    """

    def __init__(
        self,
        path: str,
        split: str = "validation",
        name: str | None = None,
        image_column: str = "image",
        label_column: str = "label",
        max_images: int = 1000,
        calib_images: int = 1000,
        batch_size: int | str = 32,
        num_workers: int = 0,
        seed: int = 0,
        streaming: bool | None = None,
    ):
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
        check(max_images >= 1, f"⟨data.max_images⟩ must be positive, got {max_images}")
        check_seed(seed, "⟨data.seed⟩")
        check(calib_images >= 1, f"⟨data.calib_images⟩ must be positive, got {calib_images}")
        check_batch_size(batch_size)
        self.path, self.split, self.name, self.streaming = path, split, name, streaming
        self.image_column, self.label_column = image_column, label_column
        self.max_images, self.calib_images, self.batch_size, self.num_workers, self.seed = (
            max_images,
            calib_images,
            batch_size,
            num_workers,
            seed,
        )
        self.preprocess = None
        self.n_classes = None
        self.eval_set = self.calib_set = None
        self._ids: dict[str, str] = {}

    def connect(self, preprocess, n_classes: int) -> None:
        self.preprocess, self.n_classes = preprocess, n_classes

    def setup(self, stage: str | None = None) -> None:
        if self.eval_set is not None:
            return
        import datasets

        check(
            self.preprocess is not None,
            "ImageData needs the model's preprocessing: call connect(preprocess, n_classes) first",
        )
        ds = load_images(self.path, self.name, self.split, self.streaming, self.image_column, self.label_column)
        columns = ds.column_names or []
        if ds.features and isinstance(ds.features.get(self.image_column), datasets.Image):
            ds = ds.cast_column(self.image_column, datasets.Image(decode=False))  # decoded below, naming a bad file
        for col, flag in ((self.image_column, "⟨--data.image_column⟩"), (self.label_column, "⟨--data.label_column⟩")):
            if columns and col not in columns:
                raise AblateError(f"data set has no column '{col}' (columns: {', '.join(columns)}); set {flag}")
        names = getattr(ds.features.get(self.label_column), "names", None) if ds.features else None
        if names is not None and len(names) != self.n_classes:
            raise AblateError(
                f"the data has {len(names)} classes but the model predicts {self.n_classes}; "
                "use data labelled in the model's label space (e.g. ImageNet-1k for an ImageNet classifier)"
            )
        needed = self.max_images + self.calib_images
        rows = pick_rows(ds, needed, self.seed)
        labels = class_labels(rows, self.label_column, self.n_classes)
        digest, images = hashlib.sha1(), []
        for i, (row, label) in enumerate(zip(rows, labels)):
            image, raw = decode(
                row[self.image_column],
                f"{i} of '{self.path}'" if isinstance(self.path, (str, os.PathLike)) else f"{i} of the data set",
            )
            images.append(image)
            digest.update(hashlib.sha1(raw).digest() + f"{image.size}:{label}".encode())  # every byte of every image
        self._ids = {"all": digest.hexdigest()[:16]}
        self.eval_set = ImageDataset(images[: self.max_images], labels[: self.max_images], self.preprocess)
        self.calib_set = ImageDataset(images[self.max_images :], labels[self.max_images :], self.preprocess)

    def fingerprint(self, which: str) -> str:
        return f"{self._ids['all']}-{which}-{self.max_images}-{self.calib_images}-{self.seed}"

    def positions(self) -> None:
        """Positions per input: known only once the model has seen an image (patches + prefix tokens)."""
        return None

    def check_positions(self, limit: int) -> None:
        """Nothing to check: the model's own preprocessing sizes every image to its input."""

    def shape_key(self) -> dict:
        return {"preprocess": repr(self.preprocess)}

    def describe(self, which: str) -> str:
        return counted(len(self.calib_set if which == "calibration" else self.eval_set), "image")

    def _loader(self, ds) -> DataLoader:
        return make_loader(ds, self.batch_size, self.num_workers)

    def calibration_sample(self, n: int, seed: int) -> ImageDataset:
        """``n`` calibration images (never evaluation ones), indexed 0..n-1: resample:data's inputs."""
        available = len(self.calib_set)
        check(
            n <= available,
            f"resample:data draws {n} rows from {available} calibration images; lower "
            f"⟨--ablation.n_resample⟩ to at most {available} or raise ⟨--data.calib_images⟩",
        )
        rows = torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n].tolist()
        return ImageDataset(
            [self.calib_set.images[i] for i in rows], [self.calib_set.labels[i] for i in rows], self.preprocess
        )

    def calibration_subset(self, rows: torch.Tensor | None = None) -> ImageDataset:
        """The calibration images (``rows`` of them), indexed 0..n-1 (optimal ablation fits on them)."""
        if rows is None:
            return self.calib_set
        rows = rows.tolist()
        return ImageDataset(
            [self.calib_set.images[i] for i in rows], [self.calib_set.labels[i] for i in rows], self.preprocess
        )

    def eval_dataset(self) -> ImageDataset:
        return self.eval_set

    def random_inputs(self, source: str, n: int, seed: int, generator=None) -> ImageDataset:
        """resample:data's ``n`` calibration images; random pixels go through the model's own preprocessing,
        so the model makes them (``VisionAblation.random_inputs``)."""
        if source != "data":
            raise ValueError(f"ImageData gives resample:data's inputs, not {source}'s")
        return self.calibration_sample(n, seed)

    task = None
    """Images are not a task: every image's class is scored."""
    has_counterfactual = False
    fixed_template = False

    def test_dataloader(self) -> DataLoader:
        return cached_loader(self, lambda: self._loader(self.eval_set))

    def val_dataloader(self) -> DataLoader:
        """The calibration split (the calibration pass runs as a validation epoch)."""
        return self._loader(self.calib_set)
