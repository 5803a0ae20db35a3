"""What a loaded dataset holds, as one hash: the key that ties every shared cache to the data itself.

Caches shared between runs (split, captions, generated images, features,
fidelity figures, each arm × seed's predictions) were keyed by image ids, and ids
are file names: relabel a folder, fix a lesion_id or replace the pictures under
the same names, and every cache would hand back results computed on the old data.
The fingerprint covers, per sample and in order, the image id, the label, the
group the split keeps together (lesion, else patient, else image) and the pixels
as normalised by the protocol, so any of those changes gives new keys.

It also finds test images that are pixel-for-pixel copies of training images, which
a separate test dataset that overlaps the training dataset would otherwise score.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from PIL import Image

from dermabench.api import Sample
from dermabench.splits import group_of


def image_digest(image: Image.Image) -> bytes:
    """BLAKE2b of one image's mode, size and pixels: equal digests, equal images."""
    digest = hashlib.blake2b(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.digest()


def data_fingerprint(samples: Sequence[Sample], digests: Sequence[bytes]) -> str:
    """One hex hash of every sample's id, label, split group and pixel digest, in order."""
    total = hashlib.blake2b(digest_size=16)
    for index, (sample, pixels) in enumerate(zip(samples, digests, strict=True)):
        total.update(f"{sample.meta.get('image_id', index)}\0{sample.label}\0{group_of(sample, index)}\0".encode())
        total.update(pixels)
    return total.hexdigest()


def copies_of(test_digests: Sequence[bytes], train_digests: Sequence[bytes]) -> list[int]:
    """Positions of the test images whose pixels equal a training image's."""
    seen = set(train_digests)
    return [i for i, pixels in enumerate(test_digests) if pixels in seen]
