"""Config precedence: defaults < profile < config file < flags, and clear errors for bad values."""

import pytest

from dermabench.config import PROFILES, RunConfig, build_config, parse_options, read_config_file
from dermabench.errors import DermabenchError


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return read_config_file(path)


def test_defaults_are_the_quick_profile_on_phantom():
    config = build_config()
    assert config.profile == "quick"
    assert config.dataset == "phantom"
    assert config.n_real == PROFILES["quick"].settings["n_real"]
    assert config.dataset_options == {"n": 3000}  # the profile's option for the phantom


def test_profile_overrides_defaults():
    config = build_config(profile="smoke")
    assert (config.n_real, config.n_synthetic, config.seeds) == (120, 120, 1)
    assert config.classifier_options == {"epochs": 3}


def test_file_overrides_profile_and_flags_override_file(tmp_path):
    settings = write(
        tmp_path,
        """
        profile = "smoke"
        n_real = 50
        seeds = 3
        [classifier_options]
        epochs = 7
        lr = 0.01
        """,
    )
    config = build_config(settings)
    assert (config.profile, config.n_real, config.seeds) == ("smoke", 50, 3)
    assert config.n_synthetic == 120  # from the profile
    assert config.classifier_options == {"epochs": 7, "lr": 0.01}  # file over profile

    config = build_config(settings, n_real=80, classifier_options={"epochs": "9"})
    assert config.n_real == 80
    assert config.seeds == 3
    assert config.classifier_options == {"epochs": "9", "lr": 0.01}  # flag over file, per key


def test_flag_profile_beats_file_profile(tmp_path):
    settings = write(tmp_path, 'profile = "paper"\n')
    assert build_config(settings, profile="smoke").profile == "smoke"
    assert build_config(settings).image_size == 224


def test_profile_plugin_options_apply_only_to_that_plugin():
    config = build_config(profile="smoke", classifier="other")
    assert config.classifier_options == {}


def test_unknown_key_in_file_is_named(tmp_path):
    with pytest.raises(DermabenchError, match="unknown setting in .*run.toml 'n_reall'.*Did you mean 'n_real'"):
        write(tmp_path, "n_reall = 5\n")


def test_invalid_toml_names_the_file(tmp_path):
    with pytest.raises(DermabenchError, match="run.toml: not valid TOML"):
        write(tmp_path, "n_real = \n")


def test_missing_config_file(tmp_path):
    with pytest.raises(DermabenchError, match="config file not found"):
        read_config_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"profile": "quik"}, "unknown profile 'quik'.*Did you mean 'quick'"),
        ({"seeds": 0}, "--seeds must be > 0"),
        ({"n_real": -1}, "--n-real must be ≥ 0"),
        ({"image_size": 8}, "--image-size must be at least 16"),
        ({"arms": "real,real+synth"}, "unknown arm 'real\\+synth'"),
        ({"arms": "synthetic"}, "must include 'real'"),
        ({"n_synthetic": 0}, "--n-synthetic is 0"),
        ({"n_synthetic": 0, "arms": "real"}, "--n-synthetic must be > 0"),
        ({"device": "tpu"}, "--device must be"),
        ({"device": "cudafoo"}, "--device must be"),
        ({"seed": -1}, "--seed must be between 0 and 2\\*\\*32 - 1, got -1"),
        ({"seed": 2**32}, "--seed must be between"),
        ({"arms": 5}, "'arms' must be a list of arm names"),
        ({"profile": 3}, "'profile' must be a string"),
        ({"generator": ["augment", "dermaflux"]}, "'generator' must be one plugin name.*repeat --generator"),
        ({"data_dir": "/no/such/folder"}, "--data-dir does not exist"),
        ({"seed": "abc"}, "'seed' must be an integer"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(flags, message):
    with pytest.raises(DermabenchError, match=message):
        build_config(**flags)


def test_parse_options():
    assert parse_options(["a=1", "path=/x=y"], "--generator-opt") == {"a": "1", "path": "/x=y"}
    with pytest.raises(DermabenchError, match="--classifier-opt expects key=value, got 'epochs'"):
        parse_options(["epochs"], "--classifier-opt")


def test_fingerprint_ignores_output_folder_but_not_settings():
    a, b = RunConfig(out="x"), RunConfig(out="y")
    assert a.fingerprint() == b.fingerprint()
    assert RunConfig(seed=1).fingerprint() != a.fingerprint()


def test_a_relative_data_dir_names_the_same_folder_wherever_the_run_starts(tmp_path, monkeypatch):
    """Two folders both called `data`, reached from two working directories, are two runs, not one."""
    for name in ("p1", "p2"):
        (tmp_path / name / "data").mkdir(parents=True)
    configs = []
    for name in ("p1", "p2"):
        monkeypatch.chdir(tmp_path / name)
        other = {"seed": 1}  # another phantom: the training dataset itself is refused as the test dataset
        configs.append(build_config(data_dir="data", test_dataset="phantom", test_data_dir="data",
                                    test_dataset_options=other))  # fmt: skip
    assert [c.data_dir for c in configs] == [str(tmp_path / "p1" / "data"), str(tmp_path / "p2" / "data")]
    assert configs[0].test_data_dir == str(tmp_path / "p1" / "data")
    assert configs[0].fingerprint() != configs[1].fingerprint()


def test_the_training_dataset_itself_is_refused_as_the_test_dataset():
    with pytest.raises(DermabenchError, match="--test-dataset 'phantom' is the training dataset itself"):
        build_config(profile="smoke", dataset="phantom", test_dataset="phantom", test_dataset_options={"n": 500},
                     dataset_options={"n": 500})  # fmt: skip
    # other options (another seed): another dataset, allowed
    build_config(dataset="phantom", test_dataset="phantom", test_dataset_options={"seed": 3})


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(DermabenchError, match="--out .*results is a file, not a folder"):
        build_config(out=str(tmp_path / "results"))


def test_cuda_without_a_gpu_is_refused_before_any_work(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DermabenchError, match="--device cuda:1: torch sees no CUDA GPU"):
        build_config(device="cuda:1")


def test_a_run_id_changes_with_the_protocol_version(monkeypatch):
    """A run finished under protocol 1 is not reported as this command's result under protocol 2."""
    from dermabench import results

    now = RunConfig().fingerprint()
    monkeypatch.setitem(results.PROTOCOL, "version", results.PROTOCOL["version"] + 1)
    assert RunConfig().fingerprint() != now


def test_an_option_typed_on_the_command_line_is_the_same_run_as_the_number_in_a_file():
    flag = build_config(dataset_options={"n": "500"}, classifier_options={"flip": "true", "epochs": "3"})
    file = build_config(dataset_options={"n": 500}, classifier_options={"flip": True, "epochs": 3})
    assert flag.fingerprint() == file.fingerprint()
    other_n = build_config(dataset_options={"n": "501"}, classifier_options={"flip": "true", "epochs": "3"})
    assert other_n.fingerprint() != file.fingerprint()


@pytest.mark.parametrize("classifier", ["cnn", "vit", "efficientnet", "resnet", "convnext"])
def test_paper_trains_every_classifier_800_steps_and_the_cpu_profiles_160(classifier):
    """The paper profile's nominal epoch is its 2,500 real images; an explicit option still wins."""
    from dermabench import plugins

    def steps(profile, **options):
        config = build_config(profile=profile, classifier=classifier, classifier_options=options)
        model = plugins.get("classifier", classifier).cls(**dict(config.classifier_options))
        return model.total_steps()

    assert steps("paper") == 20 * 40 and steps("quick") == 20 * 8
    assert steps("paper", epoch_size="640") == 20 * 10
