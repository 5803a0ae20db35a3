"""Where model weights are on disk, and what identifies them: model folders, LoRA files, hashes.

`dermaflux` and `sd15`/`sdxl` take the same ``model=`` (a diffusers folder or a hub id) and
``lora=`` (a .safetensors file or a folder holding one). Finding them is the same for both; what a
generator tells its user when they are missing (which folder layout, where to download) is its own,
and is passed in. Nothing here downloads: a hub id is looked up in the Hugging Face cache only.
The file hash and the offline check serve the feature extractors too (`extractor_support`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from dermabench.errors import DermabenchError

#: the file name diffusers' `save_lora_weights` writes and `load_lora_weights` looks for
LORA_FILE = "pytorch_lora_weights.safetensors"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE say that nothing may be downloaded."""
    flags = (os.environ.get(var, "").strip().lower() for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag in ("1", "true", "yes", "on") for flag in flags)


def sha256_file(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 - a memo
    """SHA-256 (hex) of a file, computed once per path, size and modification time."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def json_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_location(model: str, generator: str, *, kind: str, holds: str, offline: str, online: str) -> Path:
    """The local folder of a diffusers model: the path itself, or its snapshot in the HF cache. Never downloads.

    The generator's own words for a failure: `kind` and `holds` describe the folder it wants ("not a diffusers
    {kind} folder ...; give the folder that holds model_index.json, {holds}"), `offline` and `online` say how
    to get a hub model that is not in the cache, with HF_HUB_OFFLINE set and without.
    """
    path = Path(os.path.expanduser(model))
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise DermabenchError(
                f"generator '{generator}': {path} is not a diffusers {kind} folder (no model_index.json); "
                f"give the folder that holds model_index.json, {holds}"
            )
        return path
    if not _HUB_ID.match(model) or model.startswith((".", "~", "/")):
        raise DermabenchError(f"generator '{generator}': model folder not found: {path}")
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json")
    if isinstance(cached, str):
        return Path(cached).parent
    missing = f"generator '{generator}': model '{model}' is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if hub_offline():
        raise DermabenchError(f"{missing} and HF_HUB_OFFLINE is set. {offline}")
    raise DermabenchError(f"{missing}. {online}")


def folder_identity(model: str, folder: Path) -> dict[str, Any]:
    """What identifies the weights in a model folder without reading gigabytes: configs + weight file sizes."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() or path.is_symlink():
            rel = str(path.relative_to(folder))
            if path.suffix == ".json":
                files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.suffix in (".safetensors", ".bin", ".model", ".txt"):
                files[rel] = path.stat().st_size
    return {"model": model, "snapshot": folder.name, "files": json_hash(files)}


def lora_file(lora: str, generator: str) -> Path:
    """The LoRA file ``lora=`` names: the file, or the one LoRA in a folder. Only safetensors (no pickles)."""
    path = Path(os.path.expanduser(lora))
    if path.is_dir():
        candidates = [path / LORA_FILE] if (path / LORA_FILE).is_file() else sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise DermabenchError(
                f"generator '{generator}': LoRA folder {path} must hold {LORA_FILE} or exactly one .safetensors "
                f"file (found {len(candidates)})"
            )
        path = candidates[0]
    if not path.is_file():
        raise DermabenchError(f"generator '{generator}': LoRA file not found: {path}")
    if path.suffix != ".safetensors":
        raise DermabenchError(
            f"generator '{generator}': LoRA files are loaded only as .safetensors (no pickles), got {path.name}"
        )
    return path
