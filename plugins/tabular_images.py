"""Shared machinery of the dataset plugins for real dermatology data.

`ham10000`, `isic`, `imagefolder` and `dermamnist` all do the same things:

* check `--data-dir` and their `--dataset-opt` options (strings; unknown names
  and bad values raise `DermabenchError` naming the dataset and the option);
* find the metadata CSV (`find_csv`: automatic when exactly one candidate sits
  in the folder or up to two folder levels below it, else `csv=PATH`);
* index image files by id (file name without suffix) at any depth (`scan`,
  `index_by_stem`); hidden files, `__MACOSX/` and other dot-folders are skipped;
* map diagnosis codes to the binary label (`LabelMap`, options `malignant=` /
  `benign=`);
* decode every image once, completely (`open_image`), and keep a load report
  (`CheckedDataset.report`) of what was found, loaded, excluded and rejected.

Label mapping (the same in every dx-coded loader)
-------------------------------------------------
Known diagnosis codes: ``akiec ak bcc bkl df mel nv scc vasc`` (HAM10000 /
ISIC 2018 codes, plus ISIC 2019's ``ak`` and ``scc``).

* Default malignant: ``mel, bcc, akiec, ak, scc``; default benign: ``nv, bkl,
  df, vasc``. ``akiec`` (actinic keratosis / Bowen's disease, i.e.
  intraepithelial carcinoma) is malignant, as in the usual HAM10000 split
  (1,954 malignant of 10,015); ISIC 2019's ``ak`` is the same lesion family
  (its Bowen's cases moved to ``scc``), so it is malignant too, which keeps a
  model trained on one collection and tested on the other consistent.
* ``malignant=mel,bcc`` replaces the malignant set; when ``benign=`` is not
  given, every other known code (and every code named in the option) is
  benign. ``benign=`` works the same way the other way round.
* With both given, codes in neither set are excluded and counted in the
  report's ``excluded_dx``; a code in both is an error.
* A code that is neither known nor named in an option (``unk``, a typo) is
  never guessed: the row is excluded and counted in ``unknown_dx``.

Validation
----------
Every image is opened with PIL and `.load()`-ed, so truncated files fail here,
not in the middle of training. Files over `PIL.Image.MAX_IMAGE_PIXELS` pixels
(a decompression bomb; PIL's default is about 89 Mpx) are rejected, both above
the limit (PIL's warning, turned into an error here) and above twice it (PIL's
error). Grayscale, palette, RGBA, CMYK and 16-bit images are passed on as they
are: the host (`dermabench.images.to_square_rgb`) converts every image with one
method; the report counts them by mode in ``converted_modes``. Truncated data is
only caught while `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is False (PIL's default).

The load report (`dataset.report`, a JSON-serialisable dict)
-------------------------------------------------------------
``n_rows`` metadata rows read; ``n_images_found`` image files found;
``n_usable`` rows with an image and a mapped label (what `samples()` will try to
decode); ``n_loaded`` images decoded and yielded; ``dx_counts`` /
``label_counts`` of the loaded samples; ``unknown_dx`` and ``excluded_dx``
({code: rows}); ``missing_images`` (ids of rows without an image);
``images_without_metadata`` (files, relative to the image folder, whose id has
no row); ``duplicate_ids`` (ids seen on two rows or two files: the first row,
and the first file in sorted path order, is used); ``undecodable`` ([file,
reason] pairs); ``converted_modes`` ({PIL mode: count} of loaded images that are
not RGB). The decode-time entries are filled while `samples()` is consumed
(``complete`` turns true at its end).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

import dermabench
from dermabench.api import LABEL_NAMES
from dermabench.errors import DermabenchError
from dermabench.image_cache import ImageCache
from dermabench.images import to_square_rgb
from dermabench.options import Option, parse_options

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
KNOWN_DX = ("akiec", "ak", "bcc", "bkl", "df", "mel", "nv", "scc", "vasc")
DEFAULT_MALIGNANT = ("mel", "bcc", "akiec", "ak", "scc")
DX_NAMES = {
    "akiec": "actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
    "ak": "actinic keratosis",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "scc": "squamous cell carcinoma",
    "vasc": "vascular lesion",
}
#: metadata CSVs are looked for in the data folder and this many folder levels below it
CSV_SEARCH_DEPTH = 2
FLAG = "--dataset-opt"


# --------------------------------------------------------------------------- options


DX_OPTIONS = {
    "malignant": Option("list", help="diagnosis codes labelled malignant (default mel,bcc,akiec,ak,scc)"),
    "benign": Option("list", help="diagnosis codes labelled benign (default: every other known code)"),
}


# --------------------------------------------------------------------------- label mapping


@dataclass(frozen=True)
class LabelMap:
    """Which diagnosis codes are malignant (1) and which benign (0); the rest are excluded."""

    malignant: frozenset[str]
    benign: frozenset[str]

    @property
    def known(self) -> frozenset[str]:
        return frozenset(KNOWN_DX) | self.malignant | self.benign

    def label(self, dx: str) -> int | None:
        if dx in self.malignant:
            return dermabench.MALIGNANT
        if dx in self.benign:
            return dermabench.BENIGN
        return None

    def to_dict(self) -> dict[str, list[str]]:
        return {"malignant": sorted(self.malignant), "benign": sorted(self.benign)}


def label_map(who: str, malignant: Sequence[str] | None = None, benign: Sequence[str] | None = None) -> LabelMap:
    """The mapping for options `malignant=` / `benign=` (see the module docstring)."""
    if malignant is None and benign is None:
        mal = frozenset(DEFAULT_MALIGNANT)
        return LabelMap(mal, frozenset(KNOWN_DX) - mal)
    named = frozenset(malignant or ()) | frozenset(benign or ())
    if malignant is not None and benign is not None:
        mal, ben = frozenset(malignant), frozenset(benign)
        both = sorted(mal & ben)
        if both:
            raise DermabenchError(
                f"{who}: {', '.join(both)} named in both options 'malignant' and 'benign'; a code can have one label"
            )
    elif malignant is not None:
        mal = frozenset(malignant)
        ben = (frozenset(KNOWN_DX) | named) - mal
    else:
        ben = frozenset(benign)
        mal = (frozenset(KNOWN_DX) | named) - ben
    return LabelMap(mal, ben)


# --------------------------------------------------------------------------- folders and files


def require_data_dir(who: str, data_dir: str | os.PathLike | None, what: str) -> Path:
    """`--data-dir` as an absolute folder path, or a DermabenchError naming it."""
    if data_dir is None or not str(data_dir).strip():
        raise DermabenchError(f"{who} needs --data-dir: {what}")
    path = Path(data_dir).expanduser()
    if not path.exists():
        raise DermabenchError(f"{who}: --data-dir {data_dir} does not exist")
    if not path.is_dir():
        raise DermabenchError(f"{who}: --data-dir {data_dir} is not a directory ({what})")
    return path.resolve()


def resolve_under(root: Path, value: str) -> Path:
    """An option's path: absolute as given, else relative to the data folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


@dataclass
class Tree:
    """What `scan` found: image files (any depth) and CSV files (limited depth), sorted."""

    root: Path
    images: list[Path] = field(default_factory=list)
    csvs: list[Path] = field(default_factory=list)


def _skip_name(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def scan(root: Path, images: bool = True, csv_depth: int | None = CSV_SEARCH_DEPTH) -> Tree:
    """Walk `root` (following symlinked folders once each) for image files and CSVs.

    CSVs are collected in `root` and up to `csv_depth` folder levels below; with
    `images=False` the walk stops at that depth.
    """
    tree = Tree(root)
    visited: set[str] = set()
    # (path relative to root, path): sorted by the relative POSIX path, built as strings once per folder
    # (Path.relative_to per file was a third of a cached HAM10000 load)
    found_images: list[tuple[str, Path]] = []
    found_csvs: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:  # a symlink loop or a second link to a folder already walked
            dirnames[:] = []
            continue
        visited.add(real)
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        dirnames[:] = sorted(d for d in dirnames if not _skip_name(d))
        if not images and csv_depth is not None and depth >= csv_depth:
            dirnames[:] = []
        folder = Path(dirpath)  # each file's Path joined onto it parses only the file name
        for name in filenames:
            if _skip_name(name):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if images and suffix in IMAGE_SUFFIXES:
                found_images.append((prefix + name, folder / name))
            elif suffix == ".csv" and (csv_depth is None or depth <= csv_depth):
                found_csvs.append((prefix + name, folder / name))
    tree.images = [path for _, path in sorted(found_images, key=lambda pair: pair[0])]
    tree.csvs = [path for _, path in sorted(found_csvs, key=lambda pair: pair[0])]
    return tree


def clean_id(value: str) -> str:
    """An image id from a CSV cell: stripped, without a known image suffix (`ISIC_1.jpg` -> `ISIC_1`)."""
    value = value.strip()
    stem, suffix = os.path.splitext(value)
    return stem if suffix.lower() in IMAGE_SUFFIXES else value


@dataclass
class ImageIndex:
    """Image files by id; an id with several files keeps them all, the first in sorted order used."""

    paths: dict[str, list[Path]]

    @property
    def n_found(self) -> int:
        return sum(len(paths) for paths in self.paths.values())

    def get(self, image_id: str) -> Path | None:
        paths = self.paths.get(image_id)
        return paths[0] if paths else None

    @property
    def duplicate_ids(self) -> list[str]:
        return [image_id for image_id, paths in self.paths.items() if len(paths) > 1]


def index_by_stem(paths: Iterable[Path]) -> ImageIndex:
    index: dict[str, list[Path]] = {}
    for path in paths:
        index.setdefault(path.stem, []).append(path)
    return ImageIndex(index)


# --------------------------------------------------------------------------- CSVs


@dataclass
class Table:
    """A CSV with lower-cased, stripped column names and stripped cell values."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]  # (line number, row)

    def has(self, *names: str) -> bool:
        return all(name in self.columns for name in names)

    def first(self, *names: str) -> str | None:
        return next((name for name in names if name in self.columns), None)


def read_header(path: Path) -> list[str]:
    """The first row of a CSV, lower-cased; [] when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [cell.strip().lower() for cell in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_table(who: str, path: Path, columns: Sequence[str] | None = None) -> Table:
    """Read a CSV; `columns` names them when the file has no header row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            names = list(columns) if columns is not None else [c.strip().lower() for c in next(reader, [])]
            rows = []
            padding = [""] * len(names)  # a short row's missing cells read as empty
            for cells in reader:
                if not "".join(cells).strip():
                    continue  # blank line
                if len(cells) < len(names):
                    cells += padding[len(cells) :]
                # zip/map instead of a per-cell comprehension: a third of a 10,000-row plan's time
                rows.append((reader.line_num, dict(zip(names, map(str.strip, cells)))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DermabenchError(f"{who}: cannot read {path}: {exc}") from exc
    return Table(path, names, rows)


def find_csv(
    who: str,
    root: Path,
    explicit: str | None,
    found: Sequence[Path],
    accept: Callable[[list[str]], bool],
    need: str,
) -> Path:
    """The metadata CSV: `explicit` (csv=PATH) if given, else the one CSV in `found` that `accept`s its header."""
    if explicit is not None:
        path = resolve_under(root, explicit)
        if not path.is_file():
            raise DermabenchError(f"{who}: option 'csv': {path} is not a file ({FLAG} csv={explicit})")
        return path
    candidates = [path for path in found if accept(read_header(path))]
    if len(candidates) == 1:
        return candidates[0]
    where = f"{root} (searched it and {CSV_SEARCH_DEPTH} folder levels below)"
    if not candidates:
        others = f" CSV files found: {', '.join(_rel(p, root) for p in found)}." if found else ""
        raise DermabenchError(
            f"{who}: no metadata CSV with {need} in {where}.{others} Name it with {FLAG} csv=PATH"
        )
    raise DermabenchError(
        f"{who}: {len(candidates)} candidate metadata CSVs in {where}: "
        f"{', '.join(_rel(p, root) for p in candidates)}. Choose one with {FLAG} csv=PATH"
    )


def _rel(path: Path, root: Path) -> str:
    text, base = str(path), str(root)
    if text.startswith(base + os.sep):  # the common case, without Path.relative_to's parsing
        return text[len(base) + 1 :].replace(os.sep, "/")
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def parse_age(value: str | None) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        age = float(value)
    except ValueError:
        return None
    return age if math.isfinite(age) else None


def or_none(value: str | None) -> str | None:
    return value if value not in (None, "") else None


# --------------------------------------------------------------------------- decoding


def open_image(path: Path) -> Image.Image:
    """Decode the whole file, in its own mode. Raises on empty, undecodable, truncated or oversized files."""
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    with warnings.catch_warnings():
        # above MAX_IMAGE_PIXELS PIL only warns; treat it as the rejection it is
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            image.load()
    return image


class CachedRejection(Exception):
    """A file the image cache remembers as unusable; its message is the original reason."""


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, CachedRejection):
        return str(exc)
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb guard (PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}): {exc}"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image PIL can identify"
    text = " ".join(str(exc).split()) or type(exc).__name__  # one line in the report and in error messages
    return text if isinstance(exc, ValueError) and text.startswith("empty file") else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- the dataset base class


@dataclass
class Record:
    """One metadata row as the loaders see it. `label` None: use the dx mapping."""

    image_id: str
    dx: str
    meta: dict[str, Any]
    label: int | None = None
    #: for binary-coded rows: no label could be read, count `dx` as unknown
    unreadable: bool = False


@dataclass
class Entry:
    """A row with an image and a label: what `samples()` decodes."""

    image_id: str
    label: int
    dx: str
    meta: dict[str, Any]
    file: str  # as shown in the report
    source: Any  # what `_decode` opens (a Path for files)


def sorted_counts(counter: Mapping[str, int]) -> dict[str, int]:
    return {key: counter[key] for key in sorted(counter, key=lambda k: (-counter[k], k))}


def new_report() -> dict[str, Any]:
    return {
        "n_rows": 0,
        "n_images_found": 0,
        "n_usable": 0,
        "n_loaded": 0,
        "dx_counts": {},
        "label_counts": {"benign": 0, "malignant": 0},
        "unknown_dx": {},
        "excluded_dx": {},
        "missing_images": [],
        "images_without_metadata": [],
        "duplicate_ids": [],
        "undecodable": [],
        "converted_modes": {},
        "complete": False,
    }


class CheckedDataset(dermabench.Dataset):
    """A dataset that lists its images up front, decodes them in `samples()` and keeps `report`.

    Subclasses set `option_specs`, parse their folder in `__init__` and call
    `plan(records, index)` (or fill `entries` themselves and call `finish_plan`).
    """

    option_specs: ClassVar[dict[str, Option]] = {}

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(data_dir=data_dir, **options)
        self.who = f"dataset '{self.name}'"
        self.data_dir = data_dir
        self.config = parse_options(self.who, options, self.option_specs, FLAG)
        self.report: dict[str, Any] = new_report()
        self.entries: list[Entry] = []
        self.mapping: LabelMap | None = None

    # -- planning ------------------------------------------------------------------

    def dx_mapping(self) -> LabelMap:
        self.mapping = label_map(self.who, self.config.get("malignant"), self.config.get("benign"))
        self.report["mapping"] = self.mapping.to_dict()
        return self.mapping

    def locate_images(self, root: Path) -> tuple[Path, Any, Any]:
        """(image folder, scan of `root`, images found): the `images` option's folder, else `root`."""
        image_root = root
        if self.config.get("images") is not None:
            image_root = resolve_under(root, self.config["images"])
            if not image_root.is_dir():
                raise DermabenchError(f"{self.who}: option 'images': {image_root} is not a directory")
            image_root = image_root.resolve()
        same = image_root == root
        tree = scan(root, images=same)
        return image_root, tree, tree.images if same else scan(image_root, csv_depth=0).images

    def plan(self, records: Iterable[Record], index: ImageIndex, image_root: Path) -> None:
        """Match rows to image files, apply the label mapping, and fill the metadata part of the report."""
        mapping = self.mapping
        seen: set[str] = set()
        duplicates = set(index.duplicate_ids)
        unknown: Counter = Counter()
        excluded: Counter = Counter()
        missing: list[str] = []
        n_rows = 0
        for record in records:
            n_rows += 1
            image_id = record.image_id
            if image_id in seen:
                duplicates.add(image_id)
                continue
            seen.add(image_id)
            path = index.get(image_id)
            if path is None:
                missing.append(image_id)
            if record.unreadable:
                unknown[record.dx] += 1
                continue
            label = record.label
            if label is None:
                assert mapping is not None, "dx-coded records need dx_mapping() first"
                label = mapping.label(record.dx)
                if label is None:
                    (excluded if record.dx in mapping.known else unknown)[record.dx or "(empty)"] += 1
                    continue
            if path is None:
                continue
            meta = {"image_id": image_id, **record.meta}
            self.entries.append(Entry(image_id, label, record.dx, meta, _rel(path, image_root), path))
        without = [
            _rel(path, image_root) for image_id, paths in index.paths.items() if image_id not in seen for path in paths
        ]
        self.report.update(
            n_rows=n_rows,
            n_images_found=index.n_found,
            unknown_dx=sorted_counts(unknown),
            excluded_dx=sorted_counts(excluded),
            missing_images=missing,
            images_without_metadata=sorted(without),
            duplicate_ids=sorted(duplicates),
        )
        self.finish_plan()

    def finish_plan(self) -> None:
        """Record what will be decoded; a class with no candidate image is an error now, not after decoding."""
        self.report["n_usable"] = len(self.entries)
        planned = Counter(entry.label for entry in self.entries)
        self._require_both_classes(planned, "has no")

    def _require_both_classes(self, counts: Mapping[int, int], verb: str) -> None:
        for label, label_name in LABEL_NAMES.items():
            if counts.get(label, 0) == 0:
                where = f" in {self.data_dir}" if self.data_dir else ""
                raise DermabenchError(f"{self.who} {verb} {label_name} images{where}{self._class_hint()}")

    def _class_hint(self) -> str:
        parts = []
        if self.mapping is not None:
            parts.append(
                f"malignant = {', '.join(sorted(self.mapping.malignant))}; "
                f"benign = {', '.join(sorted(self.mapping.benign))}"
            )
        dx = Counter(entry.dx for entry in self.entries)
        if dx:
            parts.append(f"usable images by dx: {', '.join(f'{k} {v}' for k, v in sorted_counts(dx).items())}")
        else:
            parts.append("no usable images at all")
        for key in ("unknown_dx", "excluded_dx"):
            if self.report.get(key):
                parts.append(f"{key}: {self.report[key]}")
        if self.report.get("missing_images"):
            parts.append(f"{len(self.report['missing_images'])} metadata rows without an image")
        undecodable = self.report.get("undecodable") or []
        if undecodable:
            # name the files: a class emptied by broken files is fixed by fixing those files
            shown = ", ".join(f"{file} ({reason})" for file, reason in undecodable[:3])
            more = f", and {len(undecodable) - 3} more" if len(undecodable) > 3 else ""
            parts.append(f"{len(undecodable)} undecodable images: {shown}{more}")
        hint = f" (check {FLAG} malignant=/benign=)" if self.mapping is not None else ""
        return " (" + "; ".join(parts) + ")" + hint

    # -- loading -------------------------------------------------------------------

    def _decode(self, entry: Entry) -> Image.Image:
        return open_image(entry.source)

    def use_image_cache(self, cache: ImageCache) -> None:
        """Serve files from `cache` (decoded, normalised to its size) and add the ones it lacks.

        The host calls this before `samples()`; images then arrive already square, RGB and
        resized, with the mode the file decoded in as `meta["file_mode"]`.
        """
        self.image_cache = cache

    def _load(self, entry: Entry) -> tuple[Image.Image, str]:
        """(image, the mode its file decoded in); through the image cache for files when one is set."""
        cache = getattr(self, "image_cache", None)
        if cache is None or not isinstance(entry.source, Path):
            image = self._decode(entry)
            return image, image.mode
        digest = cache.digest(entry.source)
        cached = cache.get(digest)
        if cached is not None:
            if cached.rejected is not None:
                raise CachedRejection(cached.rejected)
            return cached.image, cached.mode
        try:
            decoded = self._decode(entry)
            image, _ = to_square_rgb(decoded, cache.size)
        except Exception as exc:  # noqa: BLE001 - see samples()
            cache.put(digest, None, "", failure_reason(exc))
            raise
        cache.put(digest, image, decoded.mode)
        return image, decoded.mode

    def samples(self) -> Iterator[dermabench.Sample]:
        """Decode every listed image once, in metadata order; rejects go to `report["undecodable"]`."""
        report = self.report
        undecodable: list[tuple[str, str]] = []
        dx_counts: Counter = Counter()
        labels: Counter = Counter()
        modes: Counter = Counter()
        report.update(n_loaded=0, complete=False)

        def publish() -> None:
            report.update(
                n_loaded=sum(labels.values()),
                dx_counts=sorted_counts(dx_counts),
                label_counts={LABEL_NAMES[k]: labels[k] for k in LABEL_NAMES},
                undecodable=list(undecodable),
                converted_modes=sorted_counts(modes),
            )

        try:
            for entry in self.entries:
                try:
                    image, mode = self._load(entry)
                except Exception as exc:  # noqa: BLE001 - every way a file can be broken is a rejection
                    undecodable.append((entry.file, failure_reason(exc)))
                    continue
                dx_counts[entry.dx] += 1
                labels[entry.label] += 1
                if mode != "RGB":
                    modes[mode] += 1
                meta = dict(entry.meta) if mode == image.mode else {**entry.meta, "file_mode": mode}
                yield dermabench.Sample(image=image, label=entry.label, meta=meta)
        finally:
            publish()
            cache = getattr(self, "image_cache", None)
            if cache is not None:
                cache.flush()
        report["complete"] = True
        self._require_both_classes(labels, "has no decodable")
