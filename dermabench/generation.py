"""Calling a generator: contract checks and the on-disk cache of generated images.

Generated images are cached by a key of everything that determines them (generator
name, version, options, its own cache_key, image size, every prompt and seed, the
dermabench version), so re-running a command generates nothing again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dermabench.api import Generator, Prompt, RunContext
from dermabench.errors import DermabenchError, PluginError, StorageError, storage_errors
from dermabench.images import to_square_rgb, to_uint8_array
from dermabench.processes import Processes
from dermabench.results import write_bytes_atomic


@contextmanager
def plugin_call(kind: str, name: str, method: str):
    """Turn any exception a plugin raises into a PluginError naming the plugin and method.

    A disk that refused the plugin's write (full, read-only, not permitted) is not the plugin's fault: that is a
    StorageError, which ends the run the same way wherever it happens.
    """
    try:
        with storage_errors(during=f"{kind} '{name}' ran {method}()"):
            yield
    except DermabenchError as exc:
        if isinstance(exc, StorageError) or f"'{name}'" in str(exc):
            raise
        # the plugin's own message, e.g. "the loss is not finite at step 3": say whose it is
        raise type(exc)(f"{kind} '{name}': {exc}") from exc
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


#: prompts per generation shard: a killed run loses at most one shard's work (≈ 30 min of FLUX.1-dev on an
#: H100); shards are also the unit that several processes share. DERMABENCH_SHARD_SIZE overrides it.
SHARD_SIZE = int(os.environ.get("DERMABENCH_SHARD_SIZE", "256"))


def _store(path: Path, images: Sequence[Image.Image], prompts: Sequence[Prompt]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, images=to_uint8_array(images), labels=np.array([p.label for p in prompts]))
    write_bytes_atomic(path, buffer.getvalue())


def shard_paths(path: Path, n_prompts: int, generator: Generator) -> list[Path]:
    """Where each shard's images wait until all are done; one shard for generators that are not `per_prompt`."""
    n_shards = -(-n_prompts // SHARD_SIZE) if generator.per_prompt else 1
    return [path.with_name(f"{path.stem}.shard{i:04d}-of-{n_shards:04d}.npz") for i in range(n_shards)]


def pending_shards(path: Path, n_prompts: int, generator: Generator) -> int:
    return sum(not shard.is_file() for shard in shard_paths(path, n_prompts, generator))


def generate_and_store(
    generator: Generator,
    prompts: Sequence[Prompt],
    context: RunContext,
    path: Path,
    processes: Processes | None = None,
) -> list[Image.Image]:
    """Call the generator shard by shard, check what it returned, and cache the images at `path`.

    Finished shards are kept until the whole set is stored, so a killed run resumes at the first
    missing shard; per-prompt seeds make the result the same as one uninterrupted call. With several
    `processes`, each generates its share of the shards and process 0 stores the whole set.
    """
    processes = processes or Processes()
    shards = shard_paths(path, len(prompts), generator)
    size = -(-len(prompts) // len(shards)) if shards else 0
    parts = [prompts[index * size : (index + 1) * size] for index in range(len(shards))]
    for index, (shard, part) in enumerate(zip(shards, parts)):
        if not processes.owns(index):
            continue
        done = load_cached(shard)
        if done is None or len(done) != len(part):
            with plugin_call("generator", generator.name, "generate"):
                done = list(generator.generate(part, context))
            done = check_images(done, part, generator.name, context.image_size)
            _store(shard, done, part)
    processes.wait()
    if processes.main:
        images = [image for shard in shards for image in (load_cached(shard) or [])]
        if len(images) != len(prompts):
            raise DermabenchError(f"generation shards in {path.parent} are incomplete: {len(images)} images")
        _store(path, images, prompts)
        for shard in shards:
            shard.unlink(missing_ok=True)
    processes.wait()
    return load_cached(path) if not processes.main else images
