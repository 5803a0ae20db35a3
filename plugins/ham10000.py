"""`ham10000`: HAM10000 (and other HAM-format collections) from a local folder.

    dermabench run --dataset ham10000 --data-dir DIR [--dataset-opt csv=FILE] [--dataset-opt malignant=mel,bcc]

DIR holds the images, `<image_id>.jpg` (or .jpeg/.png/...) at any depth — the
Harvard Dataverse download's `HAM10000_images_part_1/` and `..._part_2/`, or an
`images/` folder — and a metadata CSV with at least the columns `image_id` and
`dx`. `lesion_id`, `age`, `sex`, `localization` and `dx_type` are used when
present; they reach `Sample.meta` as `lesion_id`, `age` (float or None), `sex`,
`site`, `dx`, `dx_type` and `image_id` (splits are grouped by `lesion_id`:
HAM10000 has 10,015 images of 7,470 lesions). The ISIC 2018 Task 3
validation/test ground truth published in this format (`lesion_id, image_id,
dx, dx_type, age, sex, localization, dataset`) loads the same way; the one-hot
`image,MEL,NV,...` files are for the `isic` dataset.

The CSV is found automatically when exactly one CSV with `image_id` and `dx`
columns lies in DIR or up to two folder levels below it; otherwise name it.

Options (`--dataset-opt key=value`):

* `csv` — the metadata CSV (relative to DIR unless absolute); default: found as above.
* `images` — the folder searched for images (relative to DIR unless absolute); default DIR.
* `malignant` — dx codes labelled malignant; default `mel,bcc,akiec,ak,scc`
  (HAM10000: mel, bcc, akiec → 1,954 malignant / 8,061 benign).
* `benign` — dx codes labelled benign; default every other known code
  (`nv, bkl, df, vasc`). Unknown codes are excluded and reported, never guessed.

Every image is decoded on load (see `tabular_images` for what is rejected and
why); `dataset.report` says what was found, loaded, excluded and rejected.
"""

from __future__ import annotations

from typing import Any, ClassVar

import dermabench
from dermabench.errors import DermabenchError
from dermabench_plugins.tabular_images import (
    DX_OPTIONS,
    CheckedDataset,
    Option,
    Record,
    clean_id,
    find_csv,
    index_by_stem,
    or_none,
    parse_age,
    read_table,
    require_data_dir,
)


class HAM10000Dataset(CheckedDataset):
    """HAM10000-format dermoscopy: an image folder plus a metadata CSV (image_id, dx, ...)."""

    name = "ham10000"
    description = "HAM10000 dermoscopy (or any HAM-format folder): images + metadata CSV with image_id, dx"

    option_specs: ClassVar[dict[str, Option]] = {
        "csv": Option("str", help="metadata CSV with image_id and dx columns (default: the one found in --data-dir)"),
        "images": Option("str", help="folder searched for <image_id>.jpg at any depth (default: --data-dir)"),
        **DX_OPTIONS,
    }

    def __init__(self, data_dir: str | None = None, **options: Any) -> None:
        super().__init__(data_dir=data_dir, **options)
        root = require_data_dir(self.who, data_dir, "the folder with the images and HAM10000_metadata.csv")
        image_root, tree, images = self.locate_images(root)
        csv_path = find_csv(
            self.who, root, self.config["csv"], tree.csvs,
            accept=lambda header: "image_id" in header and "dx" in header,
            need="columns image_id and dx",
        )  # fmt: skip
        table = read_table(self.who, csv_path)
        if not table.has("image_id", "dx"):
            raise DermabenchError(
                f"{self.who}: {csv_path} needs columns image_id and dx; found {', '.join(table.columns) or 'no header'}"
            )
        self.report.update(csv=str(csv_path), images_root=str(image_root))
        self.dx_mapping()
        self.plan(self._records(table), index_by_stem(images), image_root)

    @staticmethod
    def _records(table) -> Any:
        extra = {"lesion_id": "lesion_id", "dx_type": "dx_type", "sex": "sex", "localization": "site"}
        present = {column: key for column, key in extra.items() if column in table.columns}
        has_age = "age" in table.columns
        for line, row in table.rows:
            image_id = clean_id(row["image_id"]) or f"(line {line}: empty image_id)"
            dx = row["dx"].lower()
            meta: dict[str, Any] = {"dx": dx}
            for column, key in present.items():
                meta[key] = or_none(row[column])
            if has_age:
                meta["age"] = parse_age(row["age"])
            yield Record(image_id, dx, meta)


@dermabench.hookimpl
def register_datasets(register):
    register(HAM10000Dataset)
