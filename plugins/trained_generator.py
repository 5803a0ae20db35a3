"""`fit` for generators that train weights: reuse a finished fit, else train, save and load the result.

DermaFlux and the Stable Diffusion baselines differ in the model, the noise schedule and the
loss target (`diffusion_training`) and in how they load, train and save weights. How a fit is
keyed, reused, resumed and recorded is the same for both, and lives here once.

A subclass provides `resolved(context)`, `load(context)`, `config["lora"]`, `_apply_lora(file)`,
`_lora_file()`, `_fit_key(train, opts, context)`, `_train(pipe, train, opts, context, ckpt_dir)`
(returning a result with `finished`, `step`, `resumed_from`), `_save_trained(final, opts, result,
seconds)` and `_load_trained(final, opts, context)`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dermabench
from dermabench.errors import PluginError


class TrainedGenerator(dermabench.Generator):
    """A generator whose `fit` trains (or reuses) weights under `work_dir/fits/<key>/`."""

    _fitted = False
    last_fit: dict[str, Any] = {}

    def fit(self, train: Sequence[dermabench.Sample], context: dermabench.RunContext) -> None:
        opts = self.resolved(context)
        pipe = self.load(context)
        if self.config["lora"] is not None:
            self._apply_lora(self._lora_file())
        if opts["train"] == "none":
            self._fitted = True
            return
        if not train:
            raise PluginError(f"generator '{self.name}': the train pool is empty")
        key = self._fit_key(train, opts, context)
        fit_dir = Path(context.work_dir) / "fits" / key[:16]
        final = fit_dir / "final"
        t0 = time.perf_counter()
        if (final / "done.json").is_file():
            context.progress.log(f"{self.name}: reusing trained weights {final}")
            self._load_trained(final, opts, context)
            self.last_fit = {**json.loads((final / "done.json").read_text()), "reused": True}
            self._fitted = True
            return
        fit_dir.mkdir(parents=True, exist_ok=True)
        (fit_dir / "fit.json").write_text(json.dumps({"key": key, "options": opts}, indent=1, default=str))
        result = self._train(pipe, train, opts, context, fit_dir / "checkpoints")
        if not result.finished:  # stop_after (tests): a checkpoint is left, nothing final
            self.last_fit = {"step": result.step, "finished": False, "resumed_from": result.resumed_from}
            return
        self._save_trained(final, opts, result, time.perf_counter() - t0)
        shutil.rmtree(fit_dir / "checkpoints", ignore_errors=True)
        self._load_trained(final, opts, context)
        self.last_fit = {**json.loads((final / "done.json").read_text()), "reused": False}
        self._fitted = True
