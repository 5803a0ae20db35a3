"""`dermamnist`: DermaMNIST (MedMNIST v2) from its `.npz` file, with its official split.

    dermabench run --dataset dermamnist --data-dir dermamnist.npz [--dataset-opt splits=train,val]

`--data-dir` is the `.npz` file itself (`dermamnist.npz`, or a MedMNIST+
`dermamnist_64.npz`/`_128`/`_224`) or a folder holding exactly one `.npz`. The file
holds `train_images`, `train_labels`, `val_images`, `val_labels`, `test_images`,
`test_labels`: uint8 images (N, H, W, 3) (or (N, H, W) grayscale) and integer
labels (N, 1) or (N,). It is read with `numpy.load(..., allow_pickle=False)`.

Official split: every sample carries `meta["official_split"]` = "train", "val"
or "test", the split the file assigns it (MedMNIST v2: 7,007 / 1,003 / 2,005).
The host uses it instead of its own grouped split when the dataset provides it.
Caveat: DermaMNIST split HAM10000's 10,015 images at random (7:1:2) without
lesion ids, so images of one lesion can sit in two splits; the file carries no
lesion ids to group by (`meta` has none).

Label order (from MedMNIST v2's `INFO["dermamnist"]["label"]`, medmnist/info.py,
which follows HAM10000's alphabetical dx codes — an assumption this loader
makes about the file, not something the file says):
0 akiec (actinic keratoses and intraepithelial carcinoma), 1 bcc (basal cell
carcinoma), 2 bkl (benign keratosis-like lesions), 3 df (dermatofibroma),
4 mel (melanoma), 5 nv (melanocytic nevi), 6 vasc (vascular lesions). Other
values are counted in the report's `unknown_dx` and excluded.

Options (`--dataset-opt key=value`):

* `splits` — which official splits to load, comma-separated; default `train,val,test`.
* `malignant` — dx codes labelled malignant; default `mel,bcc,akiec,ak,scc`
  (here: akiec, bcc, mel).
* `benign` — dx codes labelled benign; default every other known code (bkl, df, nv, vasc).
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

import dermabench
from dermabench.errors import DermabenchError
from dermabench_plugins.tabular_images import DX_OPTIONS, CheckedDataset, Entry, Option, sorted_counts

#: MedMNIST v2 INFO["dermamnist"]["label"], as HAM10000 dx codes
DERMAMNIST_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
SPLITS = ("train", "val", "test")


def _npy_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array in an .npz without reading its data."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return shape, dtype


class DermaMNISTDataset(CheckedDataset):
    """DermaMNIST (MedMNIST v2): HAM10000 at 28×28 (or 64-224) in one .npz, with its official split."""

    name = "dermamnist"
    description = "DermaMNIST (MedMNIST v2) .npz: HAM10000 at 28-224 px with its official train/val/test split"

    option_specs: ClassVar[dict[str, Option]] = {
        "splits": Option("list", help="official splits to load (default train,val,test)", choices=SPLITS),
        **DX_OPTIONS,
    }  # fmt: skip

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(data_dir=data_dir, **options)
        self.path = self._find_npz(data_dir)
        self.splits = self.config["splits"] or SPLITS
        self.report.update(npz=str(self.path), splits=list(self.splits))
        mapping = self.dx_mapping()
        self._arrays: dict[str, np.ndarray] | None = None
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                keys = set(npz.files)
                needed = [f"{split}_{part}" for split in self.splits for part in ("images", "labels")]
                absent = [key for key in needed if key not in keys]
                if absent:
                    raise DermabenchError(
                        f"{self.who}: {self.path} lacks {', '.join(absent)} "
                        f"(has {', '.join(sorted(keys)) or 'nothing'}); is it a MedMNIST file?"
                    )
                labels = {split: self._labels(npz, split) for split in self.splits}
            shapes = {split: self._image_shape(split, len(labels[split])) for split in self.splits}
        except (OSError, ValueError, zipfile.BadZipFile, KeyError, EOFError) as exc:
            raise DermabenchError(f"{self.who}: cannot read {self.path}: {exc}") from exc
        unknown: Counter = Counter()
        excluded: Counter = Counter()
        n_rows = 0
        for split in self.splits:
            for index, value in enumerate(labels[split]):
                n_rows += 1
                image_id = f"dermamnist_{split}_{index:05d}"
                if not 0 <= value < len(DERMAMNIST_DX):
                    unknown[f"label {value}"] += 1
                    continue
                dx = DERMAMNIST_DX[value]
                label = mapping.label(dx)
                if label is None:
                    excluded[dx] += 1
                    continue
                meta = {"image_id": image_id, "dx": dx, "official_split": split}
                self.entries.append(Entry(image_id, label, dx, meta, f"{split}_images[{index}]", (split, index)))
        self.report.update(
            n_rows=n_rows,
            n_images_found=sum(shape[0] for shape in shapes.values()),
            unknown_dx=sorted_counts(unknown),
            excluded_dx=sorted_counts(excluded),
            image_shape={split: list(shape[1:]) for split, shape in shapes.items()},
        )
        self.finish_plan()

    def _find_npz(self, data_dir: str | None) -> Path:
        if data_dir is None or not str(data_dir).strip():
            raise DermabenchError(f"{self.who} needs --data-dir: the DermaMNIST .npz file (or its folder)")
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise DermabenchError(f"{self.who}: --data-dir {data_dir} does not exist")
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".npz" and p.is_file())
            if len(found) != 1:
                listing = f": {', '.join(p.name for p in found)}" if found else ""
                raise DermabenchError(
                    f"{self.who}: --data-dir {data_dir} holds {len(found)} .npz files{listing}; "
                    f"give the file itself as --data-dir"
                )
            path = found[0]
        elif path.suffix.lower() != ".npz":
            raise DermabenchError(f"{self.who}: --data-dir {data_dir} is neither a .npz file nor a directory")
        return path.resolve()

    def _labels(self, npz, split: str) -> np.ndarray:
        labels = np.asarray(npz[f"{split}_labels"])
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        numeric = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
        if labels.ndim != 1 or not numeric:
            raise DermabenchError(
                f"{self.who}: {split}_labels in {self.path} must be integer class indices of shape (N,) or (N, 1), "
                f"got {labels.dtype} {labels.shape}"
            )
        if np.issubdtype(labels.dtype, np.floating):
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise DermabenchError(f"{self.who}: {split}_labels in {self.path} are not whole numbers")
        return labels.astype(np.int64)

    def _image_shape(self, split: str, n_labels: int) -> tuple[int, ...]:
        shape, dtype = _npy_shape(self.path, f"{split}_images")
        ok = len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))
        if not ok or dtype != np.uint8:
            raise DermabenchError(
                f"{self.who}: {split}_images in {self.path} must be uint8 of shape (N, H, W, 3) or (N, H, W), "
                f"got {dtype} {tuple(shape)}"
            )
        if shape[0] != n_labels:
            raise DermabenchError(
                f"{self.who}: {self.path} has {shape[0]} {split} images but {n_labels} {split} labels"
            )
        return tuple(shape)

    def _decode(self, entry: Entry) -> Image.Image:
        split, index = entry.source
        array = self._arrays[split][index]
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        return Image.fromarray(np.array(array))  # a copy: the image must not pin the whole split array

    def samples(self):
        """Yield the samples of the chosen official splits, train first, in file order."""
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                self._arrays = {split: npz[f"{split}_images"] for split in self.splits}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DermabenchError(f"{self.who}: cannot read {self.path}: {exc}") from exc
        try:
            yield from super().samples()
        finally:
            self._arrays = None


@dermabench.hookimpl
def register_datasets(register):
    register(DermaMNISTDataset)
