"""The built-in `cnn` classifier and the shared training loop (TorchImageClassifier)."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import dermabench
from dermabench.errors import DermabenchError, PluginError
from dermabench_plugins import cnn
from dermabench_plugins.cnn import CNNClassifier
from dermabench_plugins.image_classifier import BatchIndices, Option, TorchImageClassifier, parse_options, roc_auc

SIZE = 32
#: tiny, fast settings: 4 nominal epochs × 8 steps of 32 images
FAST = dict(epochs=4, epoch_size=256, batch_size=32, width=8)
pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n, seed, size=SIZE, malignant_share=0.3):
    """Label 1: a big dark blob; label 0: a small lighter blob; random position, skin tone and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    samples = []
    for i in range(n):
        label = int(rng.random() < malignant_share)
        skin = rng.uniform(160, 230, 3)
        radius = size * (rng.uniform(0.22, 0.34) if label else rng.uniform(0.12, 0.26))
        tone = rng.uniform(50, 110) if label else rng.uniform(80, 140)
        cx, cy = rng.uniform(0.35, 0.65, 2) * size
        mask = np.clip((radius - np.hypot(xx - cx, yy - cy)) / 2, 0, 1)[..., None]
        colour = 0.5 * skin + 0.5 * np.array([tone, 0.7 * tone, 0.5 * tone])
        pixels = skin * (1 - mask) + colour * mask + rng.normal(0, 20, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        samples.append(dermabench.Sample(image, label, meta={"lesion_id": f"{seed}-{i}"}))
    return samples


@pytest.fixture(scope="module")
def data():
    return {"train": toy(240, 1), "val": toy(120, 2), "test": toy(160, 3)}


def ctx(seed=0, size=SIZE):
    return dermabench.RunContext(seed=seed, image_size=size)


def images(samples):
    return [s.image for s in samples]


def labels(samples):
    return np.array([s.label for s in samples])


def test_registered_through_hook():
    found = []
    cnn.register_classifiers(register=found.append)
    assert found == [CNNClassifier]
    assert CNNClassifier.name == "cnn" and CNNClassifier.description
    assert issubclass(CNNClassifier, TorchImageClassifier) and issubclass(CNNClassifier, dermabench.Classifier)


def test_learns_toy_task_and_returns_probabilities(data):
    clf = CNNClassifier(**FAST)
    clf.fit(data["train"], data["val"], ctx())
    p = clf.predict_proba(images(data["test"]), ctx())
    assert p.shape == (len(data["test"]),) and p.dtype == np.float64
    assert np.all((p >= 0) & (p <= 1))
    auc = roc_auc(labels(data["test"]), p)
    assert auc > 0.9, auc
    assert clf.predict_proba([], ctx()).shape == (0,)
    # images of another size and mode are resized and converted
    odd = [data["test"][0].image.resize((50, 40)).convert("L")]
    assert clf.predict_proba(odd, ctx()).shape == (1,)


def test_learns_the_phantom_task():
    """The embedded dataset (noisy ABCD rule, ceiling about AUC 0.90), split by lesion, at 32 px.

    A tiny budget (~600 train images, 64 steps) reaches 0.67-0.73 over seeds; the full
    defaults at 64 px reach about 0.75-0.80. Here: clearly above chance.
    """
    from dermabench_plugins.phantom import PhantomDataset

    samples = list(PhantomDataset(n=1000, size=32).samples())
    fold = {s.meta["lesion_id"]: int(s.meta["lesion_id"].rsplit("-", 1)[1]) % 5 for s in samples}
    train = [s for s in samples if fold[s.meta["lesion_id"]] < 3]
    val = [s for s in samples if fold[s.meta["lesion_id"]] == 3]
    test = [s for s in samples if fold[s.meta["lesion_id"]] == 4]
    clf = CNNClassifier(**{**FAST, "epochs": 8})
    clf.fit(train, val, ctx())
    auc = roc_auc(labels(test), clf.predict_proba(images(test), ctx()))
    assert auc > 0.65, auc


def test_same_seed_is_bit_identical_and_seeds_differ(data):
    def run(seed):
        clf = CNNClassifier(**FAST)
        clf.fit(data["train"], data["val"], ctx(seed))
        return clf.predict_proba(images(data["test"]), ctx(seed))

    before = torch.random.get_rng_state()
    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # the host's global torch RNG is left alone
    assert torch.equal(before, torch.random.get_rng_state())


def test_string_options_from_the_cli_are_coerced():
    clf = CNNClassifier(epochs="5", lr="1e-3", augment="false", steps="none", balance="Sampler", width="8")
    assert clf.config["epochs"] == 5 and clf.config["lr"] == 1e-3
    assert clf.config["augment"] is False and clf.config["steps"] is None
    assert clf.config["balance"] == "sampler" and clf.config["width"] == 8
    assert CNNClassifier().config["batch_size"] == 64


@pytest.mark.parametrize(
    "options, words",
    [
        ({"epoch": 3}, ["cnn", "unknown option 'epoch'", "Did you mean 'epochs'"]),
        ({"epochs": "many"}, ["cnn", "'epochs'", "integer", "'many'"]),
        ({"epochs": 0}, ["cnn", "'epochs'", "≥ 1"]),
        ({"lr": "-1"}, ["cnn", "'lr'", "> 0"]),
        ({"lr": "nan"}, ["cnn", "'lr'"]),
        ({"balance": "oversample"}, ["cnn", "'balance'", "loss, sampler, none"]),
        ({"augment": "maybe"}, ["cnn", "'augment'", "true or false"]),
        ({"dropout": 1.5}, ["cnn", "'dropout'"]),
        ({"batch_size": 2.5}, ["cnn", "'batch_size'"]),
    ],
)
def test_bad_options_name_plugin_and_option(options, words):
    with pytest.raises(DermabenchError) as info:
        CNNClassifier(**options)
    for word in words:
        assert word in str(info.value)


def test_required_option_and_flag_in_message():
    specs = {"path": Option("str", required=True)}
    with pytest.raises(DermabenchError, match=r"generator 'x': option 'path' is required \(--generator-opt path="):
        parse_options("generator 'x'", {}, specs, "--generator-opt")


def test_fixed_step_budget_is_the_same_for_every_training_set_size(data):
    """The fairness policy: an arm with 3× the images takes exactly as many optimisation steps."""
    steps = {}
    for n in (60, 240):
        clf = CNNClassifier(**FAST, patience=0)
        clf.fit(data["train"][:n], data["val"], ctx())
        steps[n] = clf.steps_done_
        assert len(clf.history) == 4
    assert steps[60] == steps[240] == 4 * math.ceil(256 / 32) == CNNClassifier(**FAST).total_steps()
    clf = CNNClassifier(**FAST, steps=11, patience=0)
    clf.fit(data["train"], data["val"], ctx())
    assert clf.steps_done_ == 11
    assert [h["step"] for h in clf.history] == [8, 11]


def test_model_selection_uses_validation_only(data):
    """Training is the same whatever the validation labels; they only pick the epoch that is kept."""
    val = data["val"]
    flipped = [dermabench.Sample(s.image, 1 - s.label, meta=s.meta) for s in val]
    fits = {}
    for key, v in (("true", val), ("flipped", flipped)):
        clf = CNNClassifier(**{**FAST, "epochs": 6}, patience=0)
        clf.fit(data["train"], v, ctx())
        fits[key] = clf
    true, flip = fits["true"].history, fits["flipped"].history
    assert fits["true"].selection_metric_ == "val_auc"
    assert [h["train_loss"] for h in true] == [h["train_loss"] for h in flip]
    aucs = np.array([h["val_auc"] for h in true])
    assert np.allclose([h["val_auc"] for h in flip], 1 - aucs)
    assert fits["true"].best_epoch_ == int(np.argmax(aucs)) + 1
    assert fits["flipped"].best_epoch_ == int(np.argmin(aucs)) + 1
    assert fits["true"].best_epoch_ != fits["flipped"].best_epoch_
    assert fits["true"].best_score_ == pytest.approx(aucs.max())
    assert sum(h["selected"] for h in true) == 1
    # the kept state is the selected one: its validation AUC is reproduced by predict_proba
    p = fits["true"].predict_proba(images(val), ctx())
    assert roc_auc(labels(val), p) == pytest.approx(aucs.max())


def test_early_stopping_and_no_validation(data):
    clf = CNNClassifier(**{**FAST, "epochs": 30}, patience=1)
    clf.fit(data["train"], data["val"], ctx())
    assert clf.stopped_early_ and len(clf.history) < 30
    assert len(clf.history) - clf.best_epoch_ == 1
    clf = CNNClassifier(**FAST)
    clf.fit(data["train"], [], ctx())
    assert clf.selection_metric_ == "none" and clf.best_epoch_ == 4


def test_class_balance_options(data):
    train = data["train"]
    n, n_pos = len(train), int(labels(train).sum())
    weights = {}
    for balance in ("loss", "sampler", "none"):
        clf = CNNClassifier(**FAST, steps=2, balance=balance)
        clf.fit(train, data["val"], ctx())
        weights[balance] = clf
    assert weights["loss"].class_weights_ == pytest.approx({0: n / (2 * (n - n_pos)), 1: n / (2 * n_pos)})
    assert weights["loss"].class_weights_[1] > 1 > weights["loss"].class_weights_[0]
    assert weights["loss"].sample_weights_ is None
    assert weights["none"].class_weights_ == {0: 1.0, 1: 1.0}
    sampler = weights["sampler"]
    assert sampler.class_weights_ == {0: 1.0, 1: 1.0}
    # each class carries half the sampling mass, so batches are balanced on average
    mass = sampler.sample_weights_.numpy()
    assert mass[labels(train) == 1].sum() == pytest.approx(0.5)
    balanced = BatchIndices(n, 32, sampler.sample_weights_, torch.Generator().manual_seed(0))
    drawn = torch.cat([next(balanced) for _ in range(200)])
    assert abs(labels(train)[drawn.numpy()].mean() - 0.5) < 0.03
    shuffled = BatchIndices(n, 32, None, torch.Generator().manual_seed(0))
    epoch = torch.cat([next(shuffled) for _ in range(n // 32)])
    assert len(set(epoch.tolist())) == len(epoch)  # plain shuffling: no repeats within a pass


def test_non_finite_loss_names_the_step(data):
    with pytest.raises(PluginError, match=r"cnn.*at step \d+"):
        CNNClassifier(**FAST, lr=1e30, balance="none").fit(data["train"], data["val"], ctx())

    class Broken(CNNClassifier):
        name = "broken"

        def build_model(self, image_size):
            model = super().build_model(image_size)
            return torch.nn.Sequential(model, torch.nn.Hardtanh(float("nan"), float("nan")))

    class NaNAtThree(TorchImageClassifier):
        name = "nan3"

        def build_model(self, image_size):
            class Net(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.w = torch.nn.Parameter(torch.zeros(1))
                    self.calls = 0

                def forward(self, x):
                    self.calls += self.training
                    out = x.mean(dim=(1, 2, 3), keepdim=False)[:, None] * self.w
                    return out * float("nan") if self.calls == 3 else out

            return Net()

    with pytest.raises(PluginError, match=r"nan3.*loss became nan at step 3 of"):
        NaNAtThree(epochs=1, epoch_size=128, batch_size=32).fit(data["train"], data["val"], ctx())


def test_contract_errors(data):
    with pytest.raises(PluginError, match="before fit"):
        CNNClassifier().predict_proba(images(data["test"][:2]), ctx())
    benign_only = [s for s in data["train"] if s.label == 0]
    with pytest.raises(PluginError, match="no malignant images"):
        CNNClassifier(**FAST).fit(benign_only, data["val"], ctx())
    with pytest.raises(PluginError, match="empty"):
        CNNClassifier(**FAST).fit([], data["val"], ctx())


def test_default_model_shape_at_64_px():
    model = CNNClassifier().build_model(64)
    out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256]
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_a_killed_fit_resumes_after_its_last_checkpoint_with_the_same_weights(data, tmp_path):
    def context(folder):
        return dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path / folder)

    whole = CNNClassifier(**FAST, checkpoint_minutes=0)
    whole.fit(data["train"], data["val"], context("whole"))
    expected = whole.predict_proba(images(data["test"]), context("whole"))
    assert not (tmp_path / "whole" / "fit-checkpoint.pt").exists()  # removed once the fit is done

    killed = CNNClassifier(**FAST, checkpoint_minutes=0)
    killed.stop_after_epoch = 2
    with pytest.raises(InterruptedError, match="stopped after epoch 2"):
        killed.fit(data["train"], data["val"], context("killed"))
    assert (tmp_path / "killed" / "fit-checkpoint.pt").is_file()

    # another training set does not resume from this checkpoint
    other = CNNClassifier(**FAST, checkpoint_minutes=0)
    other.stop_after_epoch = 1
    with pytest.raises(InterruptedError):
        other.fit(data["train"][:200], data["val"], context("killed"))
    assert other.resumed_after_epoch_ == 0

    killed.stop_after_epoch = 2
    with pytest.raises(InterruptedError):
        killed.fit(data["train"], data["val"], context("killed"))  # the checkpoint of the right data again
    resumed = CNNClassifier(**FAST, checkpoint_minutes=0)
    resumed.fit(data["train"], data["val"], context("killed"))
    assert resumed.resumed_after_epoch_ == 2
    assert np.array_equal(resumed.predict_proba(images(data["test"]), context("killed")), expected)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]
    assert resumed.best_epoch_ == whole.best_epoch_


def test_a_fit_without_a_checkpoint_does_not_hash_its_data(data, tmp_path, monkeypatch):
    # the fingerprint (a hash of every training and validation pixel) is for resuming only
    def refuse(*args, **kwargs):
        raise AssertionError("the data was hashed")

    monkeypatch.setattr(CNNClassifier, "_fingerprint", refuse)
    clf = CNNClassifier(**FAST)
    clf.fit(data["train"], data["val"], dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path))
    assert clf.steps_done_ > 0
    with pytest.raises(AssertionError, match="hashed"):  # a checkpoint to save needs it
        CNNClassifier(**FAST, checkpoint_minutes=0).fit(
            data["train"], data["val"], dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path / "c"))


def test_checkpoints_carry_the_cuda_rng_stream_when_training_on_cuda(monkeypatch):
    # dropout and drop_path on a GPU tensor draw from the CUDA generator: a resumed CUDA fit needs its state
    from dermabench_plugins import image_classifier as ic

    states, calls = {"cuda:0": torch.tensor([1, 2, 3], dtype=torch.uint8)}, []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[str(device)].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append((state, device)))
    saved = ic._rng_states("cuda:0")
    assert torch.equal(saved["torch_rng"], torch.get_rng_state()) and torch.equal(saved["cuda_rng"], states["cuda:0"])
    assert "cuda_rng" not in ic._rng_states("cpu")
    before = torch.get_rng_state()
    ic._set_rng_states(saved, "cuda:0")
    assert len(calls) == 1 and torch.equal(calls[0][0], states["cuda:0"]) and calls[0][1] == "cuda:0"
    ic._set_rng_states({"torch_rng": before}, "cuda:0")  # a checkpoint from before: the CPU stream only
    assert len(calls) == 1 and torch.equal(torch.get_rng_state(), before)


def test_a_fits_checkpoint_holds_every_rng_stream_it_saved(data, tmp_path, monkeypatch):
    from dermabench_plugins import image_classifier as ic

    saved_states = ic._rng_states
    marker = torch.tensor([7, 7], dtype=torch.uint8)
    monkeypatch.setattr(ic, "_rng_states", lambda device: {**saved_states(device), "cuda_rng": marker})
    killed = CNNClassifier(**FAST, checkpoint_minutes=0)
    killed.stop_after_epoch = 1
    with pytest.raises(InterruptedError):
        killed.fit(data["train"], data["val"], dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path))
    state = torch.load(tmp_path / "fit-checkpoint.pt", weights_only=True)
    assert torch.equal(state["cuda_rng"], marker) and "torch_rng" in state
    resumed = CNNClassifier(**FAST, checkpoint_minutes=0)  # on the CPU the CUDA stream is not touched
    resumed.fit(data["train"], data["val"], dermabench.RunContext(seed=0, image_size=SIZE, work_dir=tmp_path))
    assert resumed.resumed_after_epoch_ == 1


def test_training_images_go_to_the_gpu_once_when_they_take_a_quarter_of_its_free_memory_or_less(monkeypatch):
    # gathering each batch on the host makes every step wait for the one before (see `on_device`)
    from dermabench_plugins import image_classifier as ic

    x = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)  # 1,920 bytes
    assert ic.on_device(x, "cpu") is x
    moved = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 1920, 80 * 2**30))
    ic.on_device(x, "cuda:0")
    assert moved == [("cuda:0",)]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 1920 - 1, 80 * 2**30))
    assert ic.on_device(x, "cuda:0") is x and len(moved) == 1  # too big: batches are gathered on the host
