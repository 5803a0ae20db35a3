"""`imagefolder`: your own real images, already labelled benign or malignant.

    dermabench run --dataset imagefolder --data-dir DIR [--dataset-opt csv=FILE]

DIR holds either

* `benign/` and `malignant/` subfolders of images (.jpg/.jpeg/.png/.bmp/.tif/.webp,
  searched at any depth; images elsewhere in DIR are listed in the report's
  `images_without_metadata`), or
* a CSV manifest with columns `path,label[,lesion_id][,patient_id]` (`filename`
  or `file` also name the path column): `path` relative to DIR, `label` 0/1 or
  benign/malignant. It is found automatically when exactly one CSV with `path`
  and `label` columns lies in DIR or up to two folder levels below it, or named
  with `csv=`; when a manifest exists it wins over the subfolders. A path that
  resolves outside DIR (`..`, an absolute path elsewhere, a symlink out) stops
  the load with an error naming the row; a row whose file is absent is counted
  in `missing_images`, an unreadable label in `unknown_dx`.

`Sample.meta` gets `image_id` (the path relative to DIR), `lesion_id` /
`patient_id` from the manifest when present (else splits are by image), and `dx`
= `benign` / `malignant`. Options: `csv` only. Every image is decoded on load
(see `tabular_images`); `dataset.report` says what was loaded and rejected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import dermabench
from dermabench.api import LABEL_NAMES
from dermabench.errors import DermabenchError
from dermabench_plugins.tabular_images import (
    CheckedDataset,
    ImageIndex,
    Option,
    Record,
    find_csv,
    or_none,
    read_header,
    read_table,
    require_data_dir,
    scan,
)

PATH_COLUMNS = ("path", "filename", "file")
LABELS = {"0": 0, "1": 1, "benign": 0, "malignant": 1}


class ImageFolderDataset(CheckedDataset):
    """Real images labelled by folder (benign/, malignant/) or by a path,label CSV manifest."""

    name = "imagefolder"
    description = "your labelled images: benign/ + malignant/ subfolders, or a path,label[,lesion_id] CSV manifest"

    option_specs: ClassVar[dict[str, Option]] = {
        "csv": Option("str", help="manifest CSV with columns path,label[,lesion_id] (default: the one found in --data-dir)"),
    }

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(data_dir=data_dir, **options)
        self.root = root = require_data_dir(
            self.who, data_dir, "a folder with benign/ and malignant/ subfolders or a path,label CSV manifest"
        )
        tree = scan(root)
        manifests = [p for p in tree.csvs if self._is_manifest(p)]
        subfolders = any((root / LABEL_NAMES[label]).is_dir() for label in LABEL_NAMES)
        self.report["images_root"] = str(root)
        if self.config["csv"] is not None or manifests or not subfolders:
            if self.config["csv"] is None and not manifests and not tree.csvs:
                raise DermabenchError(
                    f"{self.who}: {root} has neither benign/ and malignant/ subfolders nor a CSV manifest "
                    f"(columns path,label[,lesion_id]); name one with --dataset-opt csv=FILE"
                )
            csv_path = find_csv(
                self.who, root, self.config["csv"], tree.csvs, accept=self._header_ok,
                need="columns path and label",
            )  # fmt: skip
            self.report.update(csv=str(csv_path), layout="manifest")
            records, index = self._manifest(csv_path, tree.images)
        else:
            self.report["layout"] = "subfolders"
            records, index = self._subfolders(tree.images)
        self.plan(records, index, root)

    @staticmethod
    def _header_ok(header: list[str]) -> bool:
        return "label" in header and any(column in header for column in PATH_COLUMNS)

    def _is_manifest(self, path: Path) -> bool:
        return self._header_ok(read_header(path))

    def _id(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # -- subfolders ----------------------------------------------------------------

    def _subfolders(self, images: list[Path]) -> tuple[list[Record], ImageIndex]:
        records = []
        for path in images:
            top = path.relative_to(self.root).parts[0]
            if top in ("benign", "malignant") and len(path.relative_to(self.root).parts) > 1:
                label = 1 if top == "malignant" else 0
                records.append(Record(self._id(path), top, {"dx": top}, label=label))
        return records, ImageIndex({self._id(path): [path] for path in images})

    # -- manifest ------------------------------------------------------------------

    def _manifest(self, csv_path: Path, images: list[Path]) -> tuple[list[Record], ImageIndex]:
        table = read_table(self.who, csv_path)
        path_column = table.first(*PATH_COLUMNS)
        if path_column is None or "label" not in table.columns:
            raise DermabenchError(
                f"{self.who}: manifest {csv_path} needs a column 'path' (or 'filename'/'file') and a column "
                f"'label'; found {', '.join(table.columns) or 'no header'}"
            )
        index = {self._id(path): [path] for path in images}
        records = []
        for line, row in table.rows:
            rel = row[path_column]
            where = f"{csv_path.name}, line {line}"
            if not rel:
                records.append(Record(f"({where}: empty path)", "", {}, unreadable=True))
                continue
            path = self._inside(rel, where)
            image_id = self._id(path)
            if path.is_file() and image_id not in index:  # e.g. a suffix the folder scan does not list
                index[image_id] = [path]
            meta = {key: or_none(row[key]) for key in ("lesion_id", "patient_id") if key in table.columns}
            raw = row["label"].strip().lower()
            label = LABELS.get(raw)
            if label is None:
                try:
                    label = {0.0: 0, 1.0: 1}.get(float(raw))
                except ValueError:
                    label = None
            if label is None:
                records.append(Record(image_id, f"(label {row['label']!r})", meta, unreadable=True))
                continue
            records.append(Record(image_id, LABEL_NAMES[label], {"dx": LABEL_NAMES[label], **meta}, label=label))
        return records, ImageIndex(index)

    def _inside(self, rel: str, where: str) -> Path:
        """`rel` as a path inside the folder (lexically normalised), or an error naming the row."""
        candidate = Path(rel).expanduser()
        joined = candidate if candidate.is_absolute() else self.root / candidate
        resolved = joined.resolve()
        if not resolved.is_relative_to(self.root):
            raise DermabenchError(
                f"{self.who}: {where}: path {rel!r} points outside {self.root}; manifest paths must stay inside "
                f"the data folder"
            )
        # the id is the path as written, without '.' and '..' parts (symlinks inside the folder kept)
        lexical = Path(os.path.normpath(joined))
        return lexical if lexical.is_relative_to(self.root) else resolved


@dermabench.hookimpl
def register_datasets(register):
    register(ImageFolderDataset)
