"""Decoded, resized images on disk, keyed by the file's content hash and the image size.

Decoding 10,000 HAM10000 JPEGs and resizing them takes longer than the rest of a
smoke run; the second run reads them back from here instead. The key is the
file's bytes (BLAKE2b), never its path or mtime, so a renamed or re-downloaded
file still hits and an edited one misses. Files that failed to decode are cached
as their rejection reason, so a re-run reports exactly the same rejects.

Layout: `<root>/<size>px/pack-<id>.npy` (an (n, size, size, 3) uint8 array) and
`pack-<id>.json` (the digests, original modes and rejections of its rows). A run
appends one pack with whatever it had to decode; the JSON is written last, so a
pack without one (an interrupted write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermabench.results import atomic_file, write_json_atomic


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


@dataclass(frozen=True)
class CachedImage:
    """One cached file: its normalised image, or why it could not be used."""

    image: Image.Image | None
    mode: str  # the mode the file decoded in ("" when it did not decode)
    rejected: str | None = None


class ImageCache:
    """Normalised RGB images at one size, looked up by file digest."""

    def __init__(self, root: Path, size: int) -> None:
        self.size = size
        self.folder = Path(root) / f"{size}px"
        self._index: dict[str, tuple[Path, int, str, str | None]] | None = None
        self._arrays: dict[Path, np.ndarray] = {}
        self._new: list[tuple[str, np.ndarray | None, str, str | None]] = []
        self.hits = 0
        self.misses = 0

    def _load_index(self) -> dict[str, tuple[Path, int, str, str | None]]:
        if self._index is None:
            self._index = {}
            for meta_file in sorted(self.folder.glob("pack-*.json")):
                try:
                    meta = json.loads(meta_file.read_text())
                except (OSError, ValueError):
                    continue  # a damaged pack is a miss, never an error
                array_file = meta_file.with_suffix(".npy")
                if meta.get("size") != self.size or not array_file.is_file():
                    continue
                for row, (digest, mode, rejected) in enumerate(zip(meta["digests"], meta["modes"], meta["rejected"])):
                    self._index[digest] = (array_file, row, mode, rejected)
        return self._index

    def get(self, digest: str) -> CachedImage | None:
        found = self._load_index().get(digest)
        if found is None:
            self.misses += 1
            return None
        array_file, row, mode, rejected = found
        self.hits += 1
        if rejected is not None:
            return CachedImage(None, mode, rejected)
        if array_file not in self._arrays:
            self._arrays[array_file] = np.load(array_file, mmap_mode="r")
        pixels = self._arrays[array_file][row].tobytes()  # frombytes: a quarter faster than fromarray here
        return CachedImage(Image.frombytes("RGB", (self.size, self.size), pixels), mode)

    def put(self, digest: str, image: Image.Image | None, mode: str, rejected: str | None = None) -> None:
        """Remember one file's outcome; written to disk by `flush`."""
        if image is not None and (image.mode != "RGB" or image.size != (self.size, self.size)):
            raise ValueError(f"the cache holds {self.size}×{self.size} RGB images, got {image.mode} {image.size}")
        array = None if image is None else np.asarray(image, dtype=np.uint8)
        self._new.append((digest, array, mode, rejected))

    def flush(self) -> Path | None:
        """Write what `put` collected as one new pack; returns its JSON path (None when nothing was new)."""
        if not self._new:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        digests = [digest for digest, *_ in self._new]
        blank = np.zeros((self.size, self.size, 3), np.uint8)
        stack = np.stack([blank if array is None else array for _, array, _, _ in self._new])
        pack = hashlib.blake2b("".join(digests).encode(), digest_size=8).hexdigest()
        array_file = self.folder / f"pack-{pack}.npy"
        with atomic_file(array_file) as handle:  # a failed write (a full disk) leaves no half pack behind
            np.save(handle, stack)
        meta = {
            "size": self.size,
            "digests": digests,
            "modes": [mode for _, _, mode, _ in self._new],
            "rejected": [rejected for *_, rejected in self._new],
        }
        written = write_json_atomic(array_file.with_suffix(".json"), meta)
        self._new.clear()
        self._index = None
        return written
