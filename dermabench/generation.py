"""Calling a generator: contract checks and the on-disk cache of generated images.

Generated images are cached by a key of everything that determines them (generator
name, version, options, its own cache_key, image size, every prompt and seed, the
dermabench version), so re-running a command generates nothing again.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermabench.api import Generator, Prompt, RunContext
from dermabench.errors import DermabenchError, PluginError
from dermabench.images import to_square_rgb, to_uint8_array
from dermabench.results import write_bytes_atomic


@contextmanager
def plugin_call(kind: str, name: str, method: str):
    """Turn any exception a plugin raises into a PluginError naming the plugin and method."""
    try:
        yield
    except DermabenchError:
        raise
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise PluginError(f"{kind} '{name}' failed in {method}(): {type(exc).__name__}: {exc}") from exc


def cache_key(parts: Mapping[str, Any], prompts: Sequence[Prompt]) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for prompt in prompts:
        digest.update(f"\n{prompt.label}\t{prompt.seed}\t{prompt.text}".encode())
    return digest.hexdigest()[:24]


def check_images(images: Sequence[Any], prompts: Sequence[Prompt], name: str, size: int) -> list[Image.Image]:
    """Enforce the contract: one RGB PIL image per prompt. Resized to the run's size like real images."""
    if len(images) != len(prompts):
        raise PluginError(f"generator '{name}' returned {len(images)} images for {len(prompts)} prompts")
    checked = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise PluginError(f"generator '{name}' returned {type(image).__name__} for prompt {index}, not a PIL image")
        if image.mode != "RGB":
            raise PluginError(f"generator '{name}' returned a {image.mode} image for prompt {index}; RGB is required")
        checked.append(to_square_rgb(image, size)[0])
    return checked


def cache_path(
    generator: Generator, prompts: Sequence[Prompt], context: RunContext, cache_dir: Path, key_parts: Mapping[str, Any]
) -> Path:
    """Where the images for these prompts are (or will be) cached."""
    with plugin_call("generator", generator.name, "cache_key"):
        extra = dict(generator.cache_key())
    key = cache_key({**key_parts, "generator_cache_key": extra, "image_size": context.image_size}, prompts)
    return Path(cache_dir) / f"{generator.name}-{key}.npz"


def load_cached(path: Path) -> list[Image.Image] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return [Image.fromarray(array) for array in stored["images"]]
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)  # a damaged cache entry is regenerated, not trusted
        return None


def generate_and_store(
    generator: Generator, prompts: Sequence[Prompt], context: RunContext, path: Path
) -> list[Image.Image]:
    """Call the generator, check what it returned, and cache the images at `path`."""
    with plugin_call("generator", generator.name, "generate"):
        images = list(generator.generate(prompts, context))
    images = check_images(images, prompts, generator.name, context.image_size)
    buffer = io.BytesIO()
    np.savez(buffer, images=to_uint8_array(images), labels=np.array([p.label for p in prompts]))
    write_bytes_atomic(path, buffer.getvalue())
    return images
