"""Near-duplicates across the split: the perceptual hash finds re-encoded, resized, turned copies only."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dermabench.images import to_square_rgb
from dermabench.near_duplicates import MAX_DISTANCE, find_near_duplicates, hamming, perceptual_hashes
from dermabench_plugins.phantom import PhantomDataset


@pytest.fixture(scope="module")
def lesions() -> list[Image.Image]:
    """One image per phantom lesion (different lesions, same look: dark blobs on skin), at 64 px."""
    seen, images = set(), []
    for sample in PhantomDataset(n=160, seed=3).samples():
        if sample.meta["lesion_id"] not in seen:
            seen.add(sample.meta["lesion_id"])
            images.append(to_square_rgb(sample.image, 64)[0])
    return images


def jpeg_again(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """What a second copy of one photo looks like after the harness's resize to 64 px."""
    large = image.resize((192, 192), Image.Resampling.BICUBIC)
    return {
        "re-saved as JPEG q70": to_square_rgb(jpeg_again(large, 70), 64)[0],
        "mirrored": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "quarter turn": image.transpose(Image.Transpose.ROTATE_90),
        "upscaled then back": image.resize((150, 150), Image.Resampling.BICUBIC).resize((64, 64)),
        "brighter": Image.fromarray(np.clip(np.asarray(image, np.int16) + 12, 0, 255).astype(np.uint8)),
    }


def test_copies_of_an_image_are_within_the_threshold(lesions):
    for image in lesions:
        original = perceptual_hashes([image], orientations=8)
        for how, copy in copies(image).items():
            distance = int(hamming(perceptual_hashes([copy], orientations=8), original)[0, 0])
            assert distance <= MAX_DISTANCE, how


def test_different_lesions_are_not_near_duplicates(lesions):
    hashes = perceptual_hashes(lesions, orientations=8)
    distance = hamming(hashes, hashes)
    np.fill_diagonal(distance, 10_000)
    assert len(lesions) >= 60
    assert distance.min() > MAX_DISTANCE


def test_hamming_is_symmetric_and_counts_bits():
    a = np.zeros((1, 8, 4), np.uint64)
    b = np.zeros((1, 8, 4), np.uint64)
    b[0, :, 0] = np.uint64(0b1011)  # 3 bits in every orientation
    b[0, 5, 2] = np.uint64(0)
    assert hamming(a, b)[0, 0] == 3 and hamming(b, a)[0, 0] == 3
    b[0, 3, 0] = np.uint64(0)  # one orientation identical: distance 0
    assert hamming(a, b)[0, 0] == 0


def test_pairs_across_parts_are_found_and_pairs_within_a_part_are_not(lesions):
    train, val, test = lesions[:30], lesions[30:45], lesions[45:60]
    test = [*test, jpeg_again(train[3], 75).transpose(Image.Transpose.ROTATE_180)]  # a leak into test
    train = [*train, train[7].transpose(Image.Transpose.FLIP_TOP_BOTTOM)]  # a duplicate inside train: fine
    parts = {"train_pool": train, "val": val, "test": test}
    ids = {name: [f"{name}-{i}" for i in range(len(images))] for name, images in parts.items()}
    found = find_near_duplicates(parts, ids)
    assert found["n_pairs"] == {"train_pool-val": 0, "train_pool-test": 1, "val-test": 0}
    assert found["n_images_with_a_near_duplicate"] == {"train_pool": 1, "val": 0, "test": 1}
    (pair,) = found["pairs"]
    assert (pair["a"], pair["b"]) == ("train_pool-3", f"test-{len(test) - 1}")
    assert pair["distance"] <= MAX_DISTANCE and found["max_distance"] == MAX_DISTANCE
