"""`folder`: benchmark a set of pre-generated images (e.g. the released DermaFlux images).

    dermabench run --generator folder --generator-opt path=DIR [--generator-opt csv=FILE]

DIR holds either

* `benign/` and `malignant/` subfolders of images (searched recursively), or
* a CSV — `DIR/labels.csv`, or the file named by `csv=` (relative to DIR unless
  absolute) — with a column `path` (or `filename` / `image`) giving each image's
  path relative to DIR, and a column `label` (0/1 or benign/malignant). Paths
  that resolve outside DIR (`..`, absolute paths, symlinks) are rejected.

If both exist the CSV wins. `generate` returns, for each prompt, the next unused
image of the prompt's label in sorted path order, converted to RGB (not resized:
the host resizes), so the same folder and prompts always give the same images.
The prompt text and seed are ignored: the images already exist. `cache_key`
fingerprints the listing (paths, labels, sizes, modification times), so the host
regenerates when the folder changes.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

import dermabench
from dermabench.api import LABEL_NAMES
from dermabench.errors import DermabenchError, PluginError
from dermabench_plugins.image_classifier import Option, parse_options

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"}
PATH_COLUMNS = ("path", "filename", "image")
LABEL_VALUES = {"0": 0, "1": 1, "benign": 0, "malignant": 1}


class FolderGenerator(dermabench.Generator):
    """Serves images from a folder of pre-generated synthetic images instead of generating them."""

    name = "folder"
    description = "pre-generated images from a folder (benign/ + malignant/ subfolders, or a labels CSV)"
    #: images are dealt out in call order, so the host asks for all of them in one call
    per_prompt = False

    option_specs: ClassVar[dict[str, Option]] = {
        "path": Option("str", None, "the folder of images", required=True),
        "csv": Option("str", None, "CSV with columns path,label (default DIR/labels.csv if present)",
                      optional=True),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        who = f"generator '{self.name}'"
        if options.get("path") in (None, ""):
            raise DermabenchError(f"{who} needs --generator-opt path=DIR (the folder of pre-generated images)")
        self.config = parse_options(who, options, self.option_specs, "--generator-opt")
        self.root = Path(self.config["path"]).expanduser()
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise DermabenchError(f"{who}: --generator-opt path={self.config['path']} {what}")
        self.root = self.root.resolve()
        #: label -> sorted absolute image paths
        self.images: dict[int, list[Path]] = self._list()
        self._next = {0: 0, 1: 0}

    # -- listing -----------------------------------------------------------------

    def _list(self) -> dict[int, list[Path]]:
        csv_path = self._csv_path()
        if csv_path is not None:
            self.layout = f"csv:{csv_path}"
            return self._list_csv(csv_path)
        found = {label: self.root / LABEL_NAMES[label] for label in (0, 1)}
        if not any(folder.is_dir() for folder in found.values()):
            raise DermabenchError(
                f"generator '{self.name}': {self.root} has neither benign/ and malignant/ subfolders nor a "
                f"labels.csv (columns path,label); name a CSV with --generator-opt csv=FILE"
            )
        self.layout = "subfolders"
        images: dict[int, list[Path]] = {0: [], 1: []}
        for label, folder in found.items():
            if not folder.is_dir():
                continue
            for path in folder.rglob("*"):
                if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                    continue
                images[label].append(self._inside(path.relative_to(self.root).as_posix(), str(folder)))
        return {label: sorted(paths, key=self._sort_key) for label, paths in images.items()}

    def _csv_path(self) -> Path | None:
        name = self.config["csv"]
        if name is None:
            default = self.root / "labels.csv"
            return default if default.is_file() else None
        path = Path(name).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise DermabenchError(f"generator '{self.name}': --generator-opt csv={name}: {path} is not a file")
        return path

    def _list_csv(self, csv_path: Path) -> dict[int, list[Path]]:
        who = f"generator '{self.name}'"
        images: dict[int, list[Path]] = {0: [], 1: []}
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                columns = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
                path_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
                label_col = columns.get("label")
                if path_col is None or label_col is None:
                    raise DermabenchError(
                        f"{who}: {csv_path} needs a column 'path' (or 'filename'/'image') and a column 'label'; "
                        f"found {', '.join(reader.fieldnames or []) or 'no header'}"
                    )
                for row in reader:
                    where = f"{csv_path}, line {reader.line_num}"
                    rel = (row.get(path_col) or "").strip()
                    raw_label = (row.get(label_col) or "").strip().lower()
                    if not rel and not raw_label:
                        continue  # blank line
                    if raw_label not in LABEL_VALUES:
                        raise DermabenchError(
                            f"{who}: {where}: label must be 0, 1, benign or malignant, got {row.get(label_col)!r}"
                        )
                    if not rel:
                        raise DermabenchError(f"{who}: {where}: empty path")
                    path = self._inside(rel, where)
                    if not path.is_file():
                        raise DermabenchError(f"{who}: {where}: image not found: {rel}")
                    images[LABEL_VALUES[raw_label]].append(path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DermabenchError(f"{who}: cannot read {csv_path}: {exc}") from exc
        return {label: sorted(paths, key=self._sort_key) for label, paths in images.items()}

    def _inside(self, rel: str, where: str) -> Path:
        """`rel` joined to the folder; DermabenchError if it resolves outside the folder."""
        candidate = Path(rel)
        resolved = (self.root / candidate).resolve()
        if candidate.is_absolute() or not resolved.is_relative_to(self.root):
            raise DermabenchError(
                f"generator '{self.name}': {where}: path {rel!r} points outside {self.root}; "
                f"image paths must be relative and stay inside the folder"
            )
        return self.root / candidate

    def _sort_key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # -- generator API -------------------------------------------------------------

    def cache_key(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        digest.update(self.layout.encode())
        for label in (0, 1):
            for path in self.images[label]:
                stat = path.stat()
                digest.update(f"{label}\0{self._sort_key(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        if self.layout.startswith("csv:"):
            digest.update(Path(self.layout[4:]).read_bytes())
        return {
            "folder": str(self.root),
            "listing_sha256": digest.hexdigest(),
            "n_benign": len(self.images[0]),
            "n_malignant": len(self.images[1]),
        }

    def available_images(self) -> dict[int, int]:
        return {label: len(paths) for label, paths in self.images.items()}

    def fit(self, train: Sequence[dermabench.Sample], context: dermabench.RunContext) -> None:
        """Nothing to learn; starts serving from the first image of each class again."""
        self._next = {0: 0, 1: 0}

    def generate(self, prompts: Sequence[dermabench.Prompt], context: dermabench.RunContext) -> list[Image.Image]:
        wanted = {0: 0, 1: 0}
        for prompt in prompts:
            if prompt.label not in wanted:
                raise PluginError(f"generator '{self.name}': prompt label must be 0 or 1, got {prompt.label!r}")
            wanted[prompt.label] += 1
        for label, count in wanted.items():
            have = len(self.images[label]) - self._next[label]
            if count > have:
                used = f" ({self._next[label]} already used)" if self._next[label] else ""
                raise DermabenchError(
                    f"generator '{self.name}': {self.root} has {len(self.images[label])} {LABEL_NAMES[label]} "
                    f"images{used} but {count} were asked for; lower --n-synthetic or add images"
                )
        out = []
        for prompt in prompts:
            path = self.images[prompt.label][self._next[prompt.label]]
            self._next[prompt.label] += 1
            out.append(self._load(path))
        return out

    def _load(self, path: Path) -> Image.Image:
        try:
            with Image.open(path) as image:
                image.load()
                return image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DermabenchError(
                f"generator '{self.name}': cannot decode {path.relative_to(self.root)} in {self.root}: {exc}"
            ) from exc


@dermabench.hookimpl
def register_generators(register):
    register(FolderGenerator)
