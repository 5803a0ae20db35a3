"""Decoded, resized images on disk, keyed by the file's content hash and the image size.

Decoding 10,000 HAM10000 JPEGs and resizing them takes longer than the rest of a
smoke run; the second run reads them back from here instead. The key is the
file's bytes (BLAKE2b), never its path or mtime, so a renamed or re-downloaded
file still hits and an edited one misses. Files that failed to decode are cached
as their rejection reason, so a re-run reports exactly the same rejects.

Hashing every file is a fifth of a cached load, so, as git's index does, the
digest of a file whose stat signature (size, mtime, ctime, inode) is unchanged
since it was hashed is taken from `<root>/file-digests.json` instead of being
recomputed. Any write to a file changes its ctime, which no tool can set back,
so an edited file is re-hashed even when its size and mtime were restored. A
file changed less than `settle_seconds` before it was hashed is not recorded:
an edit in the same clock tick could otherwise keep the old signature.

Layout: `<root>/<size>px/pack-<id>.npy` (an (n, size, size, 3) uint8 array) and
`pack-<id>.json` (the digests, original modes and rejections of its rows). A run
appends one pack with whatever it had to decode; the JSON is written last, so a
pack without one (an interrupted write) is ignored, and so is a pack whose JSON names
another resize method than `images.RESIZE_METHOD` (change that text when the method changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermabench.images import RESIZE_METHOD
from dermabench.results import atomic_file, write_bytes_atomic, write_json_atomic


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

    settle_seconds = 2.0  # FAT's mtime is 2 s coarse; everything else is finer

    def __init__(self, root: Path, size: int) -> None:
        self.size = size
        self.folder = Path(root) / f"{size}px"
        self._digests_file = Path(root) / "file-digests.json"
        self._known: dict[str, list] | None = None  # path -> [size, mtime_ns, ctime_ns, inode, digest]
        self._known_changed = False
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
                # a pack resized another way (an older version's method) is not these images
                if meta.get("size") != self.size or meta.get("resize") != RESIZE_METHOD or not array_file.is_file():
                    continue
                for row, (digest, mode, rejected) in enumerate(zip(meta["digests"], meta["modes"], meta["rejected"])):
                    self._index[digest] = (array_file, row, mode, rejected)
        return self._index

    def digest(self, path: Path) -> str:
        """The file's content digest; hashed again only when its stat signature changed."""
        if self._known is None:
            try:
                self._known = json.loads(self._digests_file.read_text())
            except (OSError, ValueError):
                self._known = {}  # none yet, or damaged: every file is hashed
        key = os.path.abspath(path)
        info = os.stat(key)
        signature = [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]
        known = self._known.get(key)
        if known is not None and known[:4] == signature:
            return known[4]
        digest = file_digest(path)
        if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > self.settle_seconds * 1e9:
            self._known[key] = [*signature, digest]
            self._known_changed = True
        return digest

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
        if self._known_changed:
            self._digests_file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(self._digests_file, json.dumps(self._known, separators=(",", ":")).encode())
            self._known_changed = False
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
            "resize": RESIZE_METHOD,
            "digests": digests,
            "modes": [mode for _, _, mode, _ in self._new],
            "rejected": [rejected for *_, rejected in self._new],
        }
        written = write_json_atomic(array_file.with_suffix(".json"), meta)
        self._new.clear()
        self._index = None
        return written
