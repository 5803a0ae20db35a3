"""The timm classifiers `vit`, `efficientnet`, `resnet`, `convnext`: weights, options, training hooks.

Tiny settings throughout (32 px, a few steps); no network (HF_HUB_OFFLINE=1 in conftest).
"""

import pickle

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image

import dermabench
from dermabench import plugins
from dermabench.errors import DermabenchError
from dermabench_plugins import efficientnet_lite0 as lite0
from dermabench_plugins import timm_classifiers as tc
from dermabench_plugins.cnn import CNNClassifier
from dermabench_plugins.image_classifier import TorchImageClassifier, random_resized_crop
from dermabench_plugins.timm_classifiers import (
    ConvNeXtClassifier,
    EfficientNetClassifier,
    ResNetClassifier,
    ViTClassifier,
)

SIZE = 32
#: a handful of optimisation steps: enough to exercise the loop, not to learn
TINY = dict(steps=4, epoch_size=32, batch_size=16, eval_batch_size=64)
VIT = "vit_tiny_patch16_224"
pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n, seed, size=SIZE):
    """Label 1: a big dark blob; label 0: a small light one."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        label = i % 3 == 0
        radius = size * (0.32 if label else 0.18)
        mask = (np.hypot(xx - size / 2, yy - size / 2) < radius)[..., None]
        pixels = np.where(mask, 70 if label else 130, 200) + rng.normal(0, 15, (size, size, 3))
        out.append(dermabench.Sample(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), int(label)))
    return out


@pytest.fixture(scope="module")
def data():
    return {"train": toy(48, 1), "val": toy(24, 2), "test": toy(12, 3)}


def ctx(seed=0, size=SIZE, profile="quick"):
    return dermabench.RunContext(seed=seed, image_size=size, profile=profile)


def images(samples):
    return [s.image for s in samples]


def resolved_model(clf, size=SIZE, profile="quick"):
    clf.resolve(ctx(size=size, profile=profile))
    return clf.build_model(size)


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- registration and defaults


def test_registered_through_the_hook_and_the_plugin_manager():
    found = []
    tc.register_classifiers(register=found.append)
    assert found == [ViTClassifier, EfficientNetClassifier, ResNetClassifier, ConvNeXtClassifier]
    assert [c.name for c in found] == ["vit", "efficientnet", "resnet", "convnext"]
    for cls in found:
        assert cls.description and issubclass(cls, TorchImageClassifier)
        assert plugins.get("classifier", cls.name).cls is cls


@pytest.mark.parametrize(
    "cls, profile, expected",
    [
        (ViTClassifier, "quick", dict(variant=VIT, weights_source="scratch", patch_size=8, lr=1e-3,
                                      head_lr_mult=1.0, layer_decay=1.0, img_size=64, epochs=20)),
        (ViTClassifier, "smoke", dict(variant=VIT, weights_source="scratch", patch_size=8, epochs=3)),
        (ViTClassifier, "paper", dict(variant="vit_base_patch16_224", weights_source="hub", patch_size=None,
                                      lr=1e-4, head_lr_mult=10.0, layer_decay=0.75, img_size=224)),
        (EfficientNetClassifier, "quick", dict(variant="tf_efficientnet_lite0", weights_source="package",
                                               lr=1e-4, head_lr_mult=10.0, layer_decay=1.0)),
        (EfficientNetClassifier, "paper", dict(variant="tf_efficientnet_lite0", weights_source="package")),
        (ResNetClassifier, "quick", dict(variant="resnet18", weights_source="scratch", lr=1e-3)),
        (ResNetClassifier, "paper", dict(variant="resnet50", weights_source="hub", lr=1e-4)),
        (ConvNeXtClassifier, "quick", dict(variant="convnext_atto", weights_source="scratch")),
        (ConvNeXtClassifier, "paper", dict(variant="convnext_tiny", weights_source="hub")),
    ],
)
def test_profile_defaults(cls, profile, expected):
    size = 224 if profile == "paper" else 64
    resolved = cls().resolve(ctx(size=size, profile=profile))
    assert resolved["label_smoothing"] == 0.1 and resolved["freeze"] is False
    assert {k: resolved[k] for k in expected} == expected


def test_explicit_options_beat_profile_defaults():
    clf = ViTClassifier(variant="vit_small_patch16_224", pretrained="false", lr="3e-4", epochs="7",
                        patch_size="16", img_size="48", layer_decay="0.5", head_lr_mult="2")
    r = clf.resolve(ctx(profile="smoke"))
    assert (r["variant"], r["weights_source"], r["lr"], r["epochs"], r["patch_size"], r["img_size"]) == (
        "vit_small_patch16_224", "scratch", 3e-4, 7, 16, 48)
    assert (r["layer_decay"], r["head_lr_mult"]) == (0.5, 2.0)
    assert EfficientNetClassifier(pretrained=False).resolve(ctx())["weights_source"] == "scratch"
    assert ResNetClassifier(pretrained=True).resolve(ctx())["weights_source"] == "hub"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "cls, options, words",
    [
        (ViTClassifier, {"variant": "vit_tinyy_patch16_224"},
         ["vit", "unknown timm ViT variant 'vit_tinyy_patch16_224'", "Did you mean 'vit_tiny_patch16_224'"]),
        (ViTClassifier, {"variant": "resnet18"}, ["'resnet18' is a timm model but not a ViT", "--classifier resnet"]),
        (ResNetClassifier, {"variant": "convnext_atto"}, ["not a ResNet", "--classifier convnext"]),
        (EfficientNetClassifier, {"variant": "efficientnet_b99"}, ["efficientnet", "'efficientnet_b99'"]),
        (ViTClassifier, {"weights": "model.ckpt"}, ["'.ckpt'", ".safetensors"]),
        (ViTClassifier, {"weights": "m.safetensors", "pretrained": "false"}, ["contradicts pretrained=false"]),
        (ViTClassifier, {"freeze": "perhaps"}, ["'freeze'", "true or false"]),
        (ViTClassifier, {"layer_decay": "1.5"}, ["'layer_decay'"]),
        (ConvNeXtClassifier, {"varient": "x"}, ["unknown option 'varient'", "Did you mean 'variant'"]),
    ],
)
def test_bad_options_are_clear_errors(cls, options, words):
    with pytest.raises(DermabenchError) as info:
        cls(**options)
    for word in words:
        assert word in str(info.value)


def test_pretrained_from_the_hub_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # no cached copy either
    clf = ViTClassifier(variant=VIT, pretrained=True)
    clf.resolve(ctx())
    with pytest.raises(DermabenchError) as info:
        clf.build_model(SIZE)
    message = str(info.value)
    assert f"'{VIT}'" in message and "weights=PATH" in message and "pretrained=false" in message


def test_missing_weights_file_is_a_clear_error(tmp_path):
    clf = ViTClassifier(variant=VIT, weights=str(tmp_path / "absent.safetensors"))
    clf.resolve(ctx())
    with pytest.raises(DermabenchError, match="weights file not found"):
        clf.build_model(SIZE)


# --------------------------------------------------------------------------- local checkpoints


def _vit(**kwargs):
    torch.manual_seed(123)
    return timm.create_model(VIT, pretrained=False, **kwargs)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_local_vit_checkpoint_loads_bit_for_bit(tmp_path, fmt):
    source = _vit(img_size=SIZE, patch_size=8, num_classes=1)  # a one-logit head is kept as it is
    sd = source.state_dict()
    path = tmp_path / ("vit.safetensors" if fmt == "safetensors" else "vit.pth")
    if fmt == "safetensors":
        safetensors.torch.save_file(sd, str(path))
    elif fmt == "pth":
        torch.save(sd, path)
    else:  # a training checkpoint: wrapped, with a DDP prefix and plain metadata
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    clf = ViTClassifier(variant=VIT, weights=str(path), patch_size=8)
    assert clf.resolve(ctx())["weights_source"] == "file"
    loaded = clf.build_model(SIZE).state_dict()
    assert loaded.keys() == sd.keys()
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    assert clf.mean == clf.std == (0.5, 0.5, 0.5)  # the variant's normalisation


def test_checkpoint_with_another_head_keeps_the_backbone_and_replaces_the_head(tmp_path):
    source = _vit(img_size=SIZE, patch_size=8)  # ImageNet-style 1000-class head
    sd = source.state_dict()
    safetensors.torch.save_file(sd, str(tmp_path / "vit.safetensors"))
    clf = ViTClassifier(variant=VIT, weights=str(tmp_path / "vit.safetensors"), patch_size=8)
    clf.resolve(ctx())
    assert clf.pretrained_model(SIZE).head.out_features == 1000
    loaded = clf.build_model(SIZE).state_dict()
    assert loaded["head.weight"].shape == (1, 192)
    body = [k for k in sd if not k.startswith("head.")]
    assert body and all(torch.equal(loaded[k], sd[k]) for k in body)


def test_vit_checkpoint_at_224_is_resampled_to_img_size(tmp_path):
    source = _vit()  # 224 px, patch 16: 14×14 + 1 position embeddings
    assert source.pos_embed.shape == (1, 197, 192)
    torch.save(source.state_dict(), tmp_path / "vit224.pth")
    clf = ViTClassifier(variant=VIT, weights=str(tmp_path / "vit224.pth"))
    clf.resolve(ctx(size=64))
    model = clf.build_model(64)
    assert model.pos_embed.shape == (1, 17, 192)  # 4×4 + class token
    assert torch.equal(model.pos_embed[:, :1], source.pos_embed[:, :1])
    expected = timm.layers.resample_abs_pos_embed(source.pos_embed, (4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


class NotATensor:
    """Anything a weights-only unpickler must not construct."""

    def __init__(self):
        self.value = 1


def test_pickles_that_are_not_weights_only_are_refused(tmp_path):
    sd = _vit(img_size=SIZE, patch_size=8, num_classes=1).state_dict()
    path = tmp_path / "full.pth"
    torch.save({"model": sd, "extra": NotATensor()}, path)
    clf = ViTClassifier(variant=VIT, weights=str(path), patch_size=8)
    clf.resolve(ctx())
    with pytest.raises(DermabenchError) as info:
        clf.build_model(SIZE)
    assert "refusing to load" in str(info.value) and "weights_only=True" in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    # a whole pickled model object is refused the same way
    torch.save(_vit(img_size=SIZE, patch_size=8, num_classes=1), tmp_path / "model.bin")
    with pytest.raises(DermabenchError, match="refusing to load"):
        tc.load_checkpoint(tmp_path / "model.bin", "test")
    # and so are files of other kinds, whatever their name says
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DermabenchError, match="not a readable safetensors file"):
        tc.load_checkpoint(tmp_path / "junk.safetensors", "test")


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    safetensors.torch.save_file(timm.create_model("resnet18").state_dict(), str(tmp_path / "r18.safetensors"))
    clf = ViTClassifier(variant=VIT, weights=str(tmp_path / "r18.safetensors"))
    clf.resolve(ctx())
    with pytest.raises(DermabenchError) as info:
        clf.build_model(SIZE)
    message = str(info.value)
    assert f"do not fit timm '{VIT}'" in message and "missing tensors" in message and "variant=" in message


# --------------------------------------------------------------------------- efficientnet weights


def test_efficientnet_pretrained_weights_classify_sklearn_flower_as_daisy():
    """Through the plugin's own model-building path, before the head is replaced."""
    from sklearn.datasets import load_sample_image

    clf = EfficientNetClassifier()
    clf.resolve(ctx(size=224))
    model = clf.pretrained_model(224).eval()
    assert clf.mean == clf.std == (0.5, 0.5, 0.5)
    flower = Image.fromarray(load_sample_image("flower.jpg"))  # 640×427
    w, h = flower.size
    scale = 256 / min(w, h)  # timm's eval transform: resize to 224 / 0.875, centre crop 224
    flower = flower.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
    left, top = (flower.width - 224) // 2, (flower.height - 224) // 2
    crop = np.asarray(flower.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    x = (torch.from_numpy(crop).permute(2, 0, 1)[None] - 0.5) / 0.5
    with torch.inference_mode():
        assert int(model(x).argmax()) == 985  # ImageNet "daisy"
    # the classifier starts from exactly the extractor's weights, with a fresh one-logit head
    reference = lite0.build_model().state_dict()
    built = clf.build_model(224).state_dict()
    assert built["classifier.weight"].shape == (1, 1280)
    assert all(torch.equal(built[k], v) for k, v in reference.items() if not k.startswith("classifier."))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "cls, options",
    [
        (ViTClassifier, {}),
        (EfficientNetClassifier, {}),
        (ResNetClassifier, {"crop_scale": 0.5}),
        (ConvNeXtClassifier, {}),
        (EfficientNetClassifier, {"img_size": 48}),
    ],
)
def test_every_family_fits_and_predicts(data, cls, options):
    clf = cls(**TINY, **options)
    clf.fit(data["train"], data["val"], ctx())
    p = clf.predict_proba(images(data["test"]), ctx())
    assert p.shape == (len(data["test"]),) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1)) and np.isfinite(p).all()
    assert clf.steps_done_ == 4 and clf.describe()["classifier"] == cls.name
    assert clf.describe()["img_size"] == options.get("img_size", SIZE)


def test_img_size_resizes_the_network_input():
    clf = EfficientNetClassifier(img_size=48)
    clf.resolve(ctx())
    zero = torch.zeros(1, 3, 1, 1)
    assert clf._prepare(torch.rand(2, 3, SIZE, SIZE), zero, zero + 1).shape == (2, 3, 48, 48)
    vit = ViTClassifier(img_size=48, patch_size=8)
    model = resolved_model(vit)
    assert model.pos_embed.shape == (1, 37, 192)  # built for 48 px: 6×6 + class token


def test_same_seed_is_bit_identical_and_seeds_differ(data):
    def run(seed):
        clf = ViTClassifier(**TINY)
        clf.fit(data["train"], data["val"], ctx(seed))
        return clf.predict_proba(images(data["test"]), ctx(seed))

    before = torch.random.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert torch.equal(before, torch.random.get_rng_state())


def test_freeze_trains_only_the_head(data):
    clf = EfficientNetClassifier(**TINY, freeze=True)
    clf.resolve(ctx())
    start = state(clf.build_model(SIZE))
    clf.fit(data["train"], data["val"], ctx())
    model = clf.model_
    head = {f"classifier.{k}" for k, _ in model.get_classifier().named_parameters()}
    assert head == {"classifier.weight", "classifier.bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == head
    end = model.state_dict()
    # every backbone tensor, BatchNorm running statistics included, is exactly as loaded
    assert all(torch.equal(end[k], v) for k, v in start.items() if k not in head)
    assert not torch.equal(end["classifier.weight"], start["classifier.weight"])
    # without freeze the backbone moves too
    full = EfficientNetClassifier(**TINY)
    full.fit(data["train"], data["val"], ctx())
    assert not torch.equal(full.model_.state_dict()["conv_stem.weight"], start["conv_stem.weight"])


def test_parameter_groups_head_multiplier_and_layer_decay():
    clf = ViTClassifier(variant=VIT, pretrained=False, patch_size=8, lr=1e-4, head_lr_mult=10, layer_decay=0.5)
    model = resolved_model(clf)
    groups = clf.parameter_groups(model)
    head = {id(p) for p in model.head.parameters()}
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(scale) == sum(1 for _ in model.parameters())  # every parameter exactly once
    assert {scale[i] for i in head} == {10.0}
    # 12 blocks: the last block trains at lr, each block below at half the rate of the one above
    assert scale[id(model.blocks[11].attn.qkv.weight)] == pytest.approx(0.5)
    assert scale[id(model.blocks[10].attn.qkv.weight)] == pytest.approx(0.25)
    assert scale[id(model.patch_embed.proj.weight)] == pytest.approx(0.5 ** 13)
    # no weight decay on position embeddings, class token, biases and norms
    assert decay[id(model.pos_embed)] == decay[id(model.cls_token)] == decay[id(model.norm.weight)] == 0.0
    assert decay[id(model.blocks[0].attn.qkv.weight)] == 0.05
    # from scratch: one rate for all
    plain = ViTClassifier(variant=VIT, pretrained=False, patch_size=8)
    assert {g["lr_scale"] for g in plain.parameter_groups(resolved_model(plain))} == {1.0}


def test_label_smoothing_in_the_shared_loss():
    logits = torch.tensor([[2.0], [-1.0]])
    y = torch.tensor([1, 0])
    w = torch.ones(2)
    eps = 0.2
    target = torch.tensor([1 - eps / 2, eps / 2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), target)
    assert TorchImageClassifier._loss(logits, y, w, eps) == pytest.approx(float(expected))
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits.reshape(-1), y.float())
    assert TorchImageClassifier._loss(logits, y, w) == pytest.approx(float(plain))
    assert CNNClassifier().config["label_smoothing"] == 0.0 and CNNClassifier().config["crop_scale"] == 1.0


def test_random_resized_crop():
    x = torch.rand(4, 3, 16, 16)
    same = random_resized_crop(x, torch.Generator().manual_seed(0), 1.0, ratio=(1.0, 1.0))
    torch.testing.assert_close(same, x)  # the full image, unchanged
    a = random_resized_crop(x, torch.Generator().manual_seed(1), 0.3)
    b = random_resized_crop(x, torch.Generator().manual_seed(1), 0.3)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    # a crop is a zoom: a horizontal ramp keeps its direction but spans a smaller range
    ramp = torch.linspace(0, 1, 64).repeat(8, 3, 64, 1)
    zoomed = random_resized_crop(ramp, torch.Generator().manual_seed(2), 0.25, ratio=(1.0, 1.0))
    span = zoomed[..., -1] - zoomed[..., 0]
    assert (span > 0.45).all() and (span < 0.999).all()
