"""`isic`: ISIC challenge data from a local folder (ground-truth CSV + images beside it).

    dermabench run --dataset isic --data-dir DIR [--dataset-opt csv=FILE] [--dataset-opt metadata=FILE]

DIR holds the images (`<id>.jpg`, `.jpeg` or `.png`, at any depth) and the
challenge's ground-truth CSV in one of these forms:

* **one-hot diagnoses** (ISIC 2018 Task 3, ISIC 2019):
  `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC` or `image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK`.
  The column set to 1 gives `dx` (lower-cased); the binary label comes from the
  dx mapping below. Rows with no column or several columns set, and `UNK`, are
  counted in the report's `unknown_dx` and excluded.
* **binary melanoma** (ISIC 2016, 2017, 2020): a `melanoma` column (2017; with
  `seborrheic_keratosis` beside it), `target` (2020) or `benign_malignant`,
  valued 0/1 or benign/malignant; the 2016 file without a header row
  (`ISIC_0000000,0.0`) too. The id column may be `image`, `image_id`,
  `image_name` or `isic_id`. These files only say melanoma or not, so the label
  is that column (melanoma = malignant) and `dx` is `mel` or `non-mel`
  (`meta["diagnosis"]` keeps the finer diagnosis where the file has one);
  `malignant=`/`benign=` do not apply and are refused.

`lesion_id`, `patient_id`, `age_approx`/`age`, `sex` and
`anatom_site_general(_challenge)` columns are used when present — in the
ground-truth file, or in a metadata CSV joined by image id
(`ISIC_2019_Training_Metadata.csv`, `ISIC2018_Task3_Training_LesionGroupings.csv`):
that one is found automatically when exactly one such CSV lies beside the
ground truth, or named with `metadata=`. Splits are grouped by `lesion_id`
(else `patient_id`), so joining it matters.

Options (`--dataset-opt key=value`):

* `csv` — the ground-truth CSV (relative to DIR unless absolute); default: the
  one CSV in DIR or up to two folder levels below that looks like ground truth.
* `metadata` — a CSV with per-image `lesion_id`/`patient_id`/age/sex/site to join; default: found as above.
* `images` — the folder searched for images (default DIR).
* `malignant` — dx codes labelled malignant (one-hot files only); default
  `mel,bcc,akiec,ak,scc`.
* `benign` — dx codes labelled benign; default every other known code
  (`nv, bkl, df, vasc`). `unk` and unknown codes are excluded and reported.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import dermabench
from dermabench.errors import DermabenchError
from dermabench_plugins.tabular_images import (
    DX_OPTIONS,
    CheckedDataset,
    Option,
    Record,
    Table,
    clean_id,
    find_csv,
    index_by_stem,
    or_none,
    parse_age,
    read_header,
    read_table,
    require_data_dir,
    resolve_under,
)

ID_COLUMNS = ("image", "image_id", "image_name", "isic_id")
ONE_HOT = ("mel", "nv", "bcc", "akiec", "ak", "bkl", "df", "vasc", "scc", "unk")
BINARY_COLUMNS = ("melanoma", "target", "benign_malignant")
META_COLUMNS = (
    "lesion_id", "patient_id", "age_approx", "age", "sex",
    "anatom_site_general_challenge", "anatom_site_general", "localization",
)  # fmt: skip
SITE_COLUMNS = ("anatom_site_general_challenge", "anatom_site_general", "localization")
HEADERLESS = re.compile(r"^isic_\d+")
POSITIVE = {"1", "1.0", "true", "yes", "malignant"}
NEGATIVE = {"0", "0.0", "false", "no", "benign"}


def _headerless(header: list[str]) -> bool:
    return bool(header) and bool(HEADERLESS.match(header[0]))


def looks_like_ground_truth(header: list[str]) -> bool:
    if _headerless(header):
        return len(header) >= 2
    if not any(column in header for column in ID_COLUMNS):
        return False
    return sum(column in header for column in ONE_HOT) >= 2 or any(column in header for column in BINARY_COLUMNS)


def looks_like_metadata(header: list[str]) -> bool:
    return (
        any(column in header for column in ID_COLUMNS)
        and any(column in header for column in META_COLUMNS)
        and not looks_like_ground_truth(header)
    )


def _binary(value: str) -> int | None:
    value = value.strip().lower()
    if value in POSITIVE:
        return 1
    if value in NEGATIVE:
        return 0
    try:
        number = float(value)
    except ValueError:
        return None
    return {0.0: 0, 1.0: 1}.get(number)


class ISICDataset(CheckedDataset):
    """ISIC challenge ground truth (one-hot diagnoses or binary melanoma) with the images beside it."""

    name = "isic"
    description = "ISIC challenge data (2016-2020): ground-truth CSV (one-hot dx or melanoma 0/1) + images"

    option_specs: ClassVar[dict[str, Option]] = {
        "csv": Option("str", help="ground-truth CSV (default: the one found in --data-dir)"),
        "metadata": Option("str", help="per-image metadata CSV to join: lesion_id, patient_id, age, sex, site (default: found)"),
        "images": Option("str", help="folder searched for <image>.jpg/.jpeg/.png at any depth (default: --data-dir)"),
        **DX_OPTIONS,
    }

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(data_dir=data_dir, **options)
        root = require_data_dir(self.who, data_dir, "the folder with the images and the ground-truth CSV")
        image_root, tree, images = self.locate_images(root)
        gt_path = find_csv(
            self.who, root, self.config["csv"], tree.csvs, accept=looks_like_ground_truth,
            need="an image column and one-hot diagnosis columns (MEL, NV, ...) or a melanoma/target column",
        )  # fmt: skip
        header = read_header(gt_path)
        table = read_table(self.who, gt_path, columns=["image", "melanoma"] if _headerless(header) else None)
        id_column = table.first(*ID_COLUMNS)
        one_hot = [column for column in ONE_HOT if column in table.columns]
        binary = table.first(*BINARY_COLUMNS)
        if id_column is None or (len(one_hot) < 2 and binary is None):
            raise DermabenchError(
                f"{self.who}: {gt_path} is not an ISIC ground-truth file: it needs an id column "
                f"({', '.join(ID_COLUMNS)}) and one-hot diagnosis columns (MEL, NV, BCC, ...) or a "
                f"melanoma/target column; found {', '.join(table.columns) or 'no header'}"
            )
        metadata = self._metadata(root, tree.csvs, gt_path)
        self.report.update(csv=str(gt_path), images_root=str(image_root))
        if len(one_hot) >= 2:
            self.report["format"] = "one-hot diagnoses: " + ", ".join(c.upper() for c in one_hot)
            self.dx_mapping()
            records = self._one_hot_records(table, id_column, one_hot, metadata)
        else:
            for key in ("malignant", "benign"):
                if self.config[key] is not None:
                    raise DermabenchError(
                        f"{self.who}: option '{key}' applies to one-hot diagnosis files; {gt_path.name} only "
                        f"has a binary '{binary}' column, which is the label"
                    )
            self.report["format"] = f"binary: {binary} (1 = melanoma = malignant)"
            records = self._binary_records(table, id_column, binary, metadata)
        self.plan(records, index_by_stem(images), image_root)

    # -- metadata join -------------------------------------------------------------

    def _metadata(self, root, csvs, gt_path) -> dict[str, dict[str, str]]:
        explicit = self.config["metadata"]
        if explicit is not None:
            path = resolve_under(root, explicit)
            if not path.is_file():
                raise DermabenchError(f"{self.who}: option 'metadata': {path} is not a file")
        else:
            candidates = [p for p in csvs if p != gt_path and looks_like_metadata(read_header(p))]
            if len(candidates) != 1:
                if candidates:
                    self.report["notes"] = [
                        f"{len(candidates)} metadata CSVs found ({', '.join(p.name for p in candidates)}); "
                        f"none joined: name one with --dataset-opt metadata=PATH"
                    ]
                return {}
            path = candidates[0]
        table = read_table(self.who, path)
        id_column = table.first(*ID_COLUMNS)
        if id_column is None:
            raise DermabenchError(
                f"{self.who}: metadata CSV {path} needs an id column ({', '.join(ID_COLUMNS)}); "
                f"found {', '.join(table.columns) or 'no header'}"
            )
        self.report["metadata_csv"] = str(path)
        rows: dict[str, dict[str, str]] = {}
        for _, row in table.rows:
            rows.setdefault(clean_id(row[id_column]), row)
        return rows

    @staticmethod
    def _meta(row: dict[str, str], extra: dict[str, str] | None) -> dict[str, Any]:
        """lesion_id, patient_id, age, sex, site from the ground-truth row, else from the metadata row."""
        meta: dict[str, Any] = {}
        for source in (row, extra or {}):
            for key in ("lesion_id", "patient_id", "sex"):
                if meta.get(key) is None and key in source:
                    meta[key] = or_none(source[key])
            if meta.get("age") is None:
                age_column = next((c for c in ("age_approx", "age") if c in source), None)
                if age_column is not None:
                    meta["age"] = parse_age(source[age_column])
            if meta.get("site") is None:
                site_column = next((c for c in SITE_COLUMNS if c in source), None)
                if site_column is not None:
                    meta["site"] = or_none(source[site_column])
        return meta

    # -- the two formats -----------------------------------------------------------

    def _one_hot_records(self, table: Table, id_column: str, one_hot: list[str], metadata):
        for line, row in table.rows:
            image_id = clean_id(row[id_column]) or f"(line {line}: empty image id)"
            hot, unreadable = [], None
            for column in one_hot:
                try:
                    value = float(row[column])
                except ValueError:
                    unreadable = f"(unreadable {column.upper()}={row[column]!r})"
                    break
                if value > 0.5:
                    hot.append(column)
            meta = self._meta(row, metadata.get(image_id))
            if unreadable is not None:
                yield Record(image_id, unreadable, meta, unreadable=True)
            elif len(hot) != 1:
                dx = "(no diagnosis column set)" if not hot else f"(several: {'+'.join(hot)})"
                yield Record(image_id, dx, meta, unreadable=True)
            else:
                yield Record(image_id, hot[0], {"dx": hot[0], **meta})

    def _binary_records(self, table: Table, id_column: str, binary: str, metadata):
        sk = "seborrheic_keratosis" if "seborrheic_keratosis" in table.columns else None
        for line, row in table.rows:
            image_id = clean_id(row[id_column]) or f"(line {line}: empty image id)"
            meta = self._meta(row, metadata.get(image_id))
            label = _binary(row[binary])
            if label is None:
                yield Record(image_id, f"({binary}={row[binary]!r})", meta, unreadable=True)
                continue
            dx = "mel" if label else "non-mel"
            diagnosis = or_none(row.get("diagnosis", "").lower())
            if diagnosis is None and binary == "melanoma":  # ISIC 2017: melanoma, seborrheic keratosis or nevus
                if label:
                    diagnosis = "melanoma"
                elif sk is not None:
                    diagnosis = "seborrheic keratosis" if _binary(row[sk]) == 1 else "nevus"
            meta = {"dx": dx, **meta}
            if diagnosis is not None:
                meta["diagnosis"] = diagnosis
            yield Record(image_id, dx, meta, label=label)


@dermabench.hookimpl
def register_datasets(register):
    register(ISICDataset)
