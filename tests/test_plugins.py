"""Plugin discovery: built-ins through entry points, third-party packages, allow-list, bad plugins."""

import importlib
import sys
import textwrap

import pytest

from in_test_plugins import registered_plugin

import dermabench
from dermabench import plugins
from dermabench.errors import DermabenchError, PluginError

BUILT_INS = {
    "generator": {"augment", "folder"},
    "classifier": {"cnn"},
    "dataset": {"phantom"},
    "extractor": {"efficientnet-lite0"},
    "captioner": {"template"},
}


@pytest.fixture
def fresh_manager(monkeypatch):
    """A new, empty plugin manager for the test; the module's own is restored afterwards."""
    import pluggy

    pm = pluggy.PluginManager(plugins.GROUP)
    pm.add_hookspecs(dermabench.hookspecs)
    monkeypatch.setattr(plugins, "pm", pm)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "_versions", {})
    return pm


@pytest.mark.parametrize("kind", sorted(BUILT_INS))
def test_built_ins_are_registered_through_entry_points(kind):
    found = plugins.registered(kind)
    assert BUILT_INS[kind] <= set(found)
    for name in BUILT_INS[kind]:
        # loaded from the project's own entry points, so the plugin name is the entry point's
        assert found[name].plugin in {ep.name for ep in importlib.metadata.entry_points(group="dermabench")}
        assert found[name].version == dermabench.__version__


def test_describe_plugins_lists_hooks_and_registrations():
    rows = {row["name"]: row for row in plugins.describe_plugins()}
    assert rows["phantom"]["hooks"] == ["register_datasets"]
    assert rows["phantom"]["registers"] == {"dataset": ["phantom"]}
    assert rows["cnn"]["registers"] == {"classifier": ["cnn"]}


def test_unknown_name_lists_known_and_suggests_closest():
    with pytest.raises(DermabenchError) as info:
        plugins.get("generator", "augmnt")
    message = str(info.value)
    assert "unknown generator 'augmnt'" in message
    assert "augment" in message and "folder" in message
    assert "Did you mean 'augment'?" in message


def test_in_test_plugin_registered_on_the_manager():
    class Echo(dermabench.Generator):
        name = "echo-test"

        def generate(self, prompts, context):
            return []

    class EchoPlugin:
        @dermabench.hookimpl
        def register_generators(self, register):
            register(Echo)

    with registered_plugin(EchoPlugin(), "echo-test"):
        assert plugins.get("generator", "echo-test").cls is Echo
    assert "echo-test" not in plugins.registered("generator")


def _install_fake_distribution(tmp_path, module_source, entry_name="hello", module="dermabench_hello"):
    """A real installed distribution (dist-info with entry_points.txt) on sys.path, as pip would leave it."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{module}-0.3.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.3.1\n")
    (info / "entry_points.txt").write_text(f"[dermabench]\n{entry_name} = {module}\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()


THIRD_PARTY = """
    import numpy as np
    import dermabench

    class Hello(dermabench.Classifier):
        name = "hello"
        description = "always says 0.5"

        def fit(self, train, val, context):
            pass

        def predict_proba(self, images, context):
            return np.full(len(images), 0.5)

    @dermabench.hookimpl
    def register_classifiers(register):
        register(Hello)
"""


def test_third_party_package_is_discovered_through_its_entry_point(tmp_path, fresh_manager, monkeypatch):
    _install_fake_distribution(tmp_path, THIRD_PARTY)
    try:
        found = plugins.registered("classifier")
        assert found["hello"].plugin == "hello"
        assert found["hello"].version == "0.3.1"
        assert found["cnn"].plugin == "cnn"  # built-ins load beside it
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("dermabench_hello", None)


def test_allow_list_limits_what_loads(fresh_manager, monkeypatch):
    monkeypatch.setenv(plugins.ALLOW_LIST_ENV, "phantom,cnn")
    assert set(plugins.registered("dataset")) == {"phantom"}
    assert set(plugins.registered("classifier")) == {"cnn"}
    assert plugins.registered("generator") == {}


def test_misspelt_hook_is_rejected(tmp_path, fresh_manager):
    _install_fake_distribution(
        tmp_path,
        """
        import dermabench

        @dermabench.hookimpl
        def register_generator(register):  # missing the s
            pass
        """,
        entry_name="typo",
        module="dermabench_typo",
    )
    try:
        with pytest.raises(PluginError, match="register_generator"):
            plugins.load_plugins()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("dermabench_typo", None)


def test_plugin_that_fails_to_import_is_named(tmp_path, fresh_manager):
    _install_fake_distribution(tmp_path, "raise RuntimeError('boom')\n", entry_name="broken", module="dermabench_broken")
    try:
        with pytest.raises(PluginError, match="plugin 'broken'.*boom"):
            plugins.load_plugins()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("dermabench_broken", None)


def test_registering_a_non_subclass_is_an_error():
    class NotAPlugin:
        @dermabench.hookimpl
        def register_datasets(self, register):
            register(dict)

    plugin = NotAPlugin()
    plugins.pm.register(plugin, name="not-a-plugin")
    try:
        with pytest.raises(PluginError, match="not-a-plugin.*not a dermabench.Dataset"):
            plugins.registered("dataset")
    finally:
        plugins.pm.unregister(plugin)
