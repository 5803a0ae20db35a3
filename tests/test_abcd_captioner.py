"""The `abcd` captioner and the lesion measurements behind it.

The phantom's `Sample.meta` carries the true attributes each image was rendered
from, so the measurements are checked against ground truth by rank correlation.
"""

import math

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

import dermabench
from dermabench import RunContext, Sample
from dermabench.errors import DermabenchError
from dermabench_plugins.abcd_captioner import UNMEASURED, ABCDCaptioner, describe
from dermabench_plugins.lesion_measurements import LesionMeasurements, measure, segment
from dermabench_plugins.phantom import PhantomDataset

PREFIX = "This photo depicts a {} lesion. Here's a description of the mole: "

# ------------------------------------------------------------------ agreement with the phantom's truth

# Seed 7 was not looked at while the measurements were developed (seeds 0 and 1 were); the
# thresholds below were fixed from seeds 0 and 1 and then checked on seed 7.
# Measured Spearman rho (n=300 at 64 px, seed 0 / 1 / 7), and in brackets the best rho that any
# *other* true attribute reaches with this one:
#   asymmetry            0.77 / 0.75 / 0.80    (0.71 / 0.67 / 0.72: true border irregularity)
#   border irregularity  0.82 / 0.83 / 0.85    (0.71 / 0.67 / 0.72: true asymmetry)
#   number of colours    0.72 / 0.76 / 0.76    (0.56 / 0.62 / 0.61: true border irregularity)
#   relative diameter    0.978 / 0.981 / 0.990 (0.54 / 0.39 / 0.45)
# Each threshold sits 0.1-0.12 below the lowest value (0.03 for the diameter, which is measured
# almost exactly). Why these levels mean something: in the phantom all attributes follow one latent
# severity, so any one of them predicts the others (brackets above). A measurement that only picked
# up "how abnormal the lesion looks" would reach the bracketed levels; so besides its threshold,
# each measurement must agree with its own attribute better than the best other true attribute
# does, which shows that it measures that attribute. With n=300, rho's standard error is about 0.03.
THRESHOLDS = {
    "asymmetry": 0.65,
    "border_irregularity": 0.70,
    "n_colours": 0.60,
    "relative_diameter": 0.95,
}


@pytest.fixture(scope="module")
def phantom():
    samples = list(PhantomDataset(n=300, size=64, seed=7).samples())
    measured = ABCDCaptioner().measure(samples, RunContext())
    return samples, measured


def test_segmentation_succeeds_on_phantom(phantom):
    samples, measured = phantom
    ok = [m.segmentation_ok for m in measured]
    assert sum(ok) >= 0.98 * len(ok)


@pytest.mark.parametrize("attribute", sorted(THRESHOLDS))
def test_measurements_agree_with_true_attributes(phantom, attribute):
    samples, measured = phantom
    pairs = [(s.meta, m) for s, m in zip(samples, measured) if m.segmentation_ok]
    truth = {k: np.array([meta[k] for meta, _ in pairs], float) for k in THRESHOLDS}
    values = np.array([getattr(m, attribute) for _, m in pairs], float)
    rho = spearmanr(values, truth[attribute])[0]
    assert rho > THRESHOLDS[attribute], f"{attribute}: rho={rho:.3f}"
    best_other = max(spearmanr(truth[k], truth[attribute])[0] for k in THRESHOLDS if k != attribute)
    assert rho > best_other, f"{attribute}: rho={rho:.3f} not above another true attribute's {best_other:.3f}"


def test_asymmetric_axes_follow_the_truth(phantom):
    # measured 0.66 / 0.73 / 0.66 (seed 0 / 1 / 7): 0, 1 or 2 axes is a coarse, noisy count
    samples, measured = phantom
    rho = spearmanr([m.asymmetry_axes for m in measured], [s.meta["asymmetry_axes"] for s in samples])[0]
    assert rho > 0.5


def test_measured_relative_diameter_is_calibrated(phantom):
    samples, measured = phantom
    ratio = np.median([m.relative_diameter / s.meta["relative_diameter"] for s, m in zip(samples, measured)])
    assert 0.9 < ratio < 1.2  # the mask reaches a little into the soft rim (measured 1.074-1.079)


def test_measured_colours_are_mostly_true_colours(phantom):
    # measured (seed 0 / 1 / 7): precision 0.83 / 0.84 / 0.83, recall 0.83 / 0.82 / 0.82. The extra
    # colours are mostly dark brown (the phantom draws network lines, dots and streaks in dark brown
    # even when it is not a listed colour); the missed ones mostly white and blue-grey, which the
    # phantom blends into brown or renders barely different from the skin.
    samples, measured = phantom
    named = sum(len(m.colours) for m in measured)
    true = sum(len(s.meta["colours"]) for s in samples)
    right = sum(len(set(m.colours) & set(s.meta["colours"])) for s, m in zip(samples, measured))
    assert right / named > 0.75 and right / true > 0.75


# ------------------------------------------------------------------ synthetic images with known geometry


def _skin(size=64, vignette=0.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5) / (size / 2)
    base = np.array([228, 182, 160], float) / 255
    img = np.broadcast_to(base, (size, size, 3)) * (1 - vignette * (r / math.sqrt(2))[..., None] ** 2.5)
    return img + rng.normal(0, 0.006, (size, size, 1)), yy, xx


def _lesion(radius_fn, size=64, od=(0.55, 1.0, 1.4), vignette=0.0, hair=0, inner=None):
    """Skin with a lesion whose outline is r(theta) = radius_fn(theta) pixels, drawn by Beer-Lambert."""
    img, yy, xx = _skin(size, vignette)
    c = size / 2 - 0.5
    theta = np.arctan2(yy - c, xx - c)
    d = np.hypot(yy - c, xx - c) / radius_fn(theta)
    alpha = np.clip((1.05 - d) / 0.1, 0, 1)[..., None]
    dens = np.asarray(od, float) * np.ones((size, size, 1))
    if inner is not None:  # a second pigment inside d < 0.5
        dens = np.where((d < 0.5)[..., None], np.asarray(inner, float), dens)
    img = img * np.exp(-dens * alpha)
    rng = np.random.default_rng(1)
    for _ in range(hair):  # straight dark hairs across the frame
        a, off = rng.uniform(0, np.pi), rng.uniform(-size / 3, size / 3)
        dist = np.abs((xx - c) * math.sin(a) - (yy - c) * math.cos(a) - off)
        img = np.where((dist < 0.7)[..., None], 0.08, img)
    return Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def test_disc_size_is_measured_despite_hair_and_vignetting():
    for hair, vignette in ((0, 0.0), (6, 0.0), (0, 0.35), (6, 0.35)):
        m = measure(_lesion(lambda t: np.full_like(t, 12.0), hair=hair, vignette=vignette))
        assert m.segmentation_ok, (hair, vignette)
        assert m.relative_diameter == pytest.approx(24 / 64, rel=0.12), (hair, vignette)
        assert m.border_irregularity < 0.25 and m.asymmetry < 0.25, (hair, vignette, m)
        assert "black" not in m.colours, (hair, vignette, m.colours)  # the hair was not counted as a colour


def test_notched_border_and_lopsided_shape_score_higher():
    disc = measure(_lesion(lambda t: np.full_like(t, 13.0)))
    star = measure(_lesion(lambda t: 13.0 * np.exp(0.25 * np.cos(9 * t))))
    lopsided = measure(_lesion(lambda t: 13.0 * np.exp(0.35 * np.cos(t) + 0.2 * np.cos(3 * t + 1))))
    assert star.border_irregularity > disc.border_irregularity + 0.3
    assert star.compactness > disc.compactness
    assert lopsided.asymmetry > disc.asymmetry + 0.2
    assert lopsided.asymmetry_axes >= 1 and disc.asymmetry_axes == 0


def test_two_pigments_give_two_colours():
    m = measure(_lesion(lambda t: np.full_like(t, 14.0), od=(0.16, 0.38, 0.62), inner=(1.9, 2.2, 2.4)))
    assert set(m.colours) == {"light brown", "black"}
    assert m.n_colours == 2


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (64, 64), (228, 182, 160)),  # blank skin
        Image.new("RGB", (64, 64), (120, 70, 40)),  # all lesion
        Image.new("RGB", (64, 64), (0, 0, 0)),
        Image.new("RGB", (64, 64), (255, 255, 255)),
        Image.new("L", (64, 64), 128),
        Image.new("RGB", (8, 8), (200, 150, 130)),
        Image.new("RGB", (1, 1), (200, 150, 130)),
    ],
    ids=["skin", "all-lesion", "black", "white", "grey-mode", "tiny", "one-pixel"],
)
def test_blank_images_do_not_crash_and_are_flagged(image):
    m = measure(image)
    assert isinstance(m, LesionMeasurements)
    assert m.segmentation_ok is False
    assert segment(image).dtype == bool


def test_noisy_all_lesion_image_is_flagged():
    rng = np.random.default_rng(0)
    arr = np.clip(np.array([120, 70, 40]) + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert measure(Image.fromarray(arr)).segmentation_ok is False


def test_large_images_and_arrays_are_accepted():
    big = _lesion(lambda t: np.full_like(t, 12.0)).resize((512, 512), Image.Resampling.BILINEAR)
    m = measure(big)
    assert m.segmentation_ok and m.relative_diameter == pytest.approx(24 / 64, rel=0.12)
    small = _lesion(lambda t: np.full_like(t, 12.0))
    assert measure(np.asarray(small)) == measure(small)
    as_float = measure(np.asarray(small) / 255.0)
    assert as_float.relative_diameter == pytest.approx(measure(small).relative_diameter, abs=0.01)


# ------------------------------------------------------------------ the captioner


def test_captions_follow_the_template_and_name_the_class(phantom):
    samples, _ = phantom
    captions = ABCDCaptioner().caption(samples[:20], RunContext())
    assert len(captions) == 20
    for sample, caption in zip(samples[:20], captions):
        label = dermabench.LABEL_NAMES[sample.label]
        assert caption.startswith(PREFIX.format(label))
        assert "axis" in caption or "axes" in caption or "symmetric" in caption
        assert "border" in caption and "colour" in caption and "of the frame across" in caption
        assert f"Located on the {sample.meta['site']}" in caption
        assert f"{sample.meta['age']}-year-old {sample.meta['sex']} patient" in caption


def test_captions_are_deterministic(phantom):
    samples, _ = phantom
    first = ABCDCaptioner().caption(samples[:15], RunContext())
    again = ABCDCaptioner().caption(samples[:15], RunContext(seed=123))
    copies = [Sample(image=s.image.copy(), label=s.label, meta=dict(s.meta)) for s in samples[:15]]
    assert first == again == ABCDCaptioner().caption(copies, RunContext())


def test_blank_image_caption_says_outline_not_measured():
    samples = [
        Sample(
            image=Image.new("RGB", (64, 64), (228, 182, 160)), label=0, meta={"site": "back", "age": 40.0, "sex": "male"}
        ),
        Sample(image=Image.new("RGB", (64, 64), (120, 70, 40)), label=1),
    ]
    captions = ABCDCaptioner().caption(samples, RunContext())
    assert captions[0] == PREFIX.format("benign") + f"{UNMEASURED}. Located on the back of a 40-year-old male patient."
    assert captions[1] == PREFIX.format("malignant") + f"{UNMEASURED}."


def test_caption_wording_of_known_measurements():
    m = LesionMeasurements(
        asymmetry=0.7, asymmetry_axes=2, border_irregularity=0.8, colours=["light brown", "dark brown", "blue-grey"],
        n_colours=3, relative_diameter=0.34, segmentation_ok=True,
    )  # fmt: skip
    meta = {"localization": "Back", "age": 55, "sex": "male", "fitzpatrick": 2}
    assert describe(m, meta) == (
        "asymmetric in both axes, with an irregular, notched border, three colours (light brown, dark brown "
        "and blue-grey), about a third of the frame across. Located on the back of a 55-year-old male patient."
    )
    plain = LesionMeasurements(asymmetry=0.05, border_irregularity=0.1, colours=["light brown"], n_colours=1,
                               relative_diameter=0.5, segmentation_ok=True)  # fmt: skip
    assert describe(plain, {"sex": "unknown", "age": None, "site": "unknown"}, fov_mm=13) == (
        "symmetric in both axes, with a regular, smooth border, one colour (light brown), about 6 mm across."
    )


def test_options():
    meta = {"site": "back", "age": 60, "sex": "female"}
    samples = [Sample(image=_lesion(lambda t: np.full_like(t, 12.0)), label=1, meta=meta)]
    assert "Located" not in ABCDCaptioner(metadata="false").caption(samples, RunContext())[0]
    assert "Located on the back" in ABCDCaptioner(metadata="TRUE").caption(samples, RunContext())[0]
    assert "about 5 mm across" in ABCDCaptioner(fov_mm="13").caption(samples, RunContext())[0]
    with pytest.raises(DermabenchError, match="unknown option.*colour_space"):
        ABCDCaptioner(colour_space="hsv")
    with pytest.raises(DermabenchError, match="metadata='maybe'"):
        ABCDCaptioner(metadata="maybe")
    with pytest.raises(DermabenchError, match="fov_mm='-3'"):
        ABCDCaptioner(fov_mm="-3")
    with pytest.raises(DermabenchError, match="fov_mm='wide'"):
        ABCDCaptioner(fov_mm="wide")


def test_progress_is_reported():
    seen = []

    class Recorder(dermabench.Progress):
        def track(self, iterable, description, total=None):
            seen.append((description, total))
            yield from iterable

    samples = [Sample(image=_lesion(lambda t: np.full_like(t, 10.0)), label=0)] * 3
    ABCDCaptioner().caption(samples, RunContext(progress=Recorder()))
    assert seen == [("abcd: measuring lesions", 3)]


def test_registered_through_entry_point():
    from dermabench import plugins

    found = plugins.registered("captioner")
    assert found["abcd"].cls is ABCDCaptioner
    assert found["abcd"].plugin == "abcd"
