"""The `llm` captioner: the `abcd` captioner's measurements, rephrased by a local instruction-tuned LM.

The ABCD attributes are measured in each image exactly as the `abcd` captioner
does (`lesion_measurements`), written as terse findings ("asymmetric in both
axes, with an irregular, notched border, three colours (...), about a third of
the frame across. Located on the back of a 55-year-old male patient.") and handed
to a causal language model with an instruction to rewrite them as a fluent
description. The caption keeps the DermaFlux template's opening verbatim,

    This photo depicts a {benign|malignant} lesion. Here's a description of the mole: <LM text>

so the class is never left to the model. The model never sees the class either,
and a reply that names one (or is empty) is replaced by the plain ABCD findings.
Images whose outline could not be measured get the plain `abcd` description.

Decoding is greedy (deterministic), batched with left padding; the model is
loaded with `local_files_only=True` (no network), once per captioner.

Options (strings from the CLI are coerced):
  model=PATH            a local model folder (e.g. Llama-3.2-1B-Instruct saved with
                        `save_pretrained`, or a snapshot folder), or a hub id already in
                        the local Hugging Face cache. Required.
  max_new_tokens=N      longest reply, in tokens (default 80)
  batch_size=N          prompts per `generate` call (default 8)
  dtype=auto|float32|bfloat16|float16   (default auto: bfloat16 on CUDA, else float32)
  metadata=true|false   pass site, age and sex on to the model (default true)
  fov_mm=NUMBER         image width in mm, for diameters in mm (as for `abcd`)
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dermabench
from dermabench import LABEL_NAMES, Captioner, RunContext, Sample
from dermabench_plugins.abcd_captioner import TEMPLATE, ABCDCaptioner, describe, findings, metadata_sentence

__all__ = ["LLMCaptioner", "INSTRUCTION", "register_captioners"]

OPTIONS = ("model", "max_new_tokens", "batch_size", "dtype", "metadata", "fov_mm")
DTYPES = ("auto", "float32", "bfloat16", "float16")

INSTRUCTION = (
    "You write captions for dermoscopy images. Rewrite the findings below as one or two fluent "
    "sentences that describe the mole. Keep every finding, including the colour names and the size; "
    "add nothing else, give no diagnosis, and do not use the words benign or malignant. "
    "Reply with the description only."
)

_CLASS_WORDS = re.compile(r"\b(benign|malignant|melanoma|cancer)\b", re.IGNORECASE)
_LEADING_TEMPLATE = re.compile(
    r"^(this photo depicts an? \w+ lesion\.\s*)?(here'?s a description of the mole:\s*)?(description:\s*)?",
    re.IGNORECASE,
)


def _error(message: str) -> dermabench.DermabenchError:
    return dermabench.DermabenchError(f"captioner 'llm': {message}")


def _int_option(name: str, value: Any, minimum: int) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise _error(f"option {name}={value!r} is not an integer") from None
    if number < minimum:
        raise _error(f"option {name}={value!r} must be >= {minimum}")
    return number


def _clean(text: str) -> str:
    """The model's reply as one tidy paragraph (printable characters, no template echo)."""
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)
    text = text.strip().split("\n\n")[0]
    text = re.sub(r"\s+", " ", text).strip().strip('"').strip()
    text = _LEADING_TEMPLATE.sub("", text).strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


class LLMCaptioner(Captioner):
    """DermaFlux template; the measured ABCD findings rephrased by a local instruction-tuned causal LM."""

    name = "llm"
    description = "ABCD findings measured in the image, rephrased by a local instruction-tuned LM (model=PATH)"

    def __init__(
        self,
        model: Any = None,
        max_new_tokens: Any = 80,
        batch_size: Any = 8,
        dtype: Any = "auto",
        metadata: Any = True,
        fov_mm: Any = None,
        **options: Any,
    ) -> None:
        if options:
            raise _error(f"unknown option(s) {', '.join(sorted(options))}. Known: {', '.join(OPTIONS)}.")
        if model is None or not str(model).strip():
            raise _error(
                "needs a model: --captioner-opt model=PATH, a local instruction-tuned causal LM folder "
                "(e.g. Llama-3.2-1B-Instruct saved with save_pretrained)"
            )
        self.model_path = str(model).strip()
        self.max_new_tokens = _int_option("max_new_tokens", max_new_tokens, 1)
        self.batch_size = _int_option("batch_size", batch_size, 1)
        self.dtype = str(dtype).strip().lower()
        if self.dtype not in DTYPES:
            raise _error(f"option dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        try:
            self.abcd = ABCDCaptioner(metadata=metadata, fov_mm=fov_mm)
        except dermabench.DermabenchError as exc:
            raise _error(str(exc).removeprefix("captioner 'abcd': ")) from None
        self.metadata = self.abcd.metadata
        super().__init__(
            model=self.model_path, max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
            dtype=self.dtype, metadata=self.metadata, fov_mm=self.abcd.fov_mm,
        )  # fmt: skip
        self._loaded: tuple[Any, Any, str] | None = None
        self._source()  # a missing or wrong model folder fails now, before any image is measured

    # ------------------------------------------------------------------ loading

    def _source(self) -> str:
        """The folder (or cached hub id) to load from; a clear error if there is none."""
        path = Path(self.model_path).expanduser()
        if path.exists():
            if not path.is_dir():
                raise _error(f"model {self.model_path!r} is a file, not a model folder")
            if not (path / "config.json").is_file():
                raise _error(f"{self.model_path!r} is not a model folder (it has no config.json)")
            return str(path)
        looks_like_hub_id = re.fullmatch(r"[\w.-]+/[\w.-]+", self.model_path) is not None
        if not looks_like_hub_id or self.model_path.startswith("."):
            raise _error(f"model folder {self.model_path!r} does not exist")
        return self.model_path  # resolved from the local Hugging Face cache, or an error below

    def load(self, device: str = "cpu") -> tuple[Any, Any]:
        """(tokenizer, model), loaded once, offline."""
        if self._loaded is not None and self._loaded[2] == device:
            return self._loaded[0], self._loaded[1]
        source = self._source()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.dtype == "auto":
            dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, self.dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            where = "folder" if Path(source).exists() else "hub id (not in the local Hugging Face cache?)"
            raise _error(f"could not load a causal LM from {where} {self.model_path!r}: {exc}") from exc
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.to(device).eval()
        self._loaded = (tokenizer, model, device)
        return tokenizer, model

    # ------------------------------------------------------------------ prompting

    def prompt(self, tokenizer: Any, findings_text: str) -> tuple[str, bool]:
        """The model input for one sample and whether it already holds the special tokens."""
        if getattr(tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": INSTRUCTION},
                {"role": "user", "content": f"Findings: {findings_text}"},
            ]
            try:
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            except Exception:  # templates without a system role: fold the instruction into the user turn
                messages = [{"role": "user", "content": f"{INSTRUCTION}\n\nFindings: {findings_text}"}]
                text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return text, True
        return f"{INSTRUCTION}\n\nFindings: {findings_text}\n\nDescription:", False

    def rephrase(self, texts: Sequence[str], context: RunContext) -> list[str]:
        """The model's cleaned reply for each findings text (greedy, batched)."""
        import torch

        tokenizer, model = self.load(context.device)
        prompts = [self.prompt(tokenizer, text) for text in texts]
        generation = copy.deepcopy(model.generation_config)
        generation.do_sample = False
        generation.num_beams = 1
        generation.temperature = generation.top_p = generation.top_k = None
        generation.max_new_tokens = self.max_new_tokens
        generation.pad_token_id = tokenizer.pad_token_id
        starts = range(0, len(prompts), self.batch_size)
        replies: list[str] = []
        for start in context.progress.track(starts, description="llm: rephrasing captions", total=len(starts)):
            batch = prompts[start : start + self.batch_size]
            templated = batch[0][1]
            encoded = tokenizer(
                [text for text, _ in batch], return_tensors="pt", padding=True, add_special_tokens=not templated
            ).to(model.device)
            with torch.inference_mode():
                out = model.generate(**encoded, generation_config=generation)
            new = out[:, encoded["input_ids"].shape[1] :]
            replies += [_clean(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
        return replies

    # ------------------------------------------------------------------ the captioner

    def caption(self, samples: Sequence[Sample], context: RunContext) -> list[str]:
        measured = self.abcd.measure(samples, context)
        plain = [describe(m, s.meta if self.metadata else None, self.abcd.fov_mm) for s, m in zip(samples, measured)]
        todo = [i for i, m in enumerate(measured) if m.segmentation_ok]
        texts = []
        for i in todo:
            text = ", ".join(findings(measured[i], self.abcd.fov_mm)) + "."
            extra = metadata_sentence(samples[i].meta) if self.metadata else ""
            texts.append(f"{text} {extra}" if extra else text)
        descriptions = list(plain)
        for i, reply in zip(todo, self.rephrase(texts, context) if texts else []):
            # the class is the template's job: a reply that names one, or says nothing, is not used
            if reply and not _CLASS_WORDS.search(reply):
                descriptions[i] = reply
        return [TEMPLATE.format(label=LABEL_NAMES[int(s.label)], description=d) for s, d in zip(samples, descriptions)]


@dermabench.hookimpl
def register_captioners(register):
    register(LLMCaptioner)
