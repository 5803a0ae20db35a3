"""The plugin manager: loads plugins from entry points and collects what they register.

Built-in plugins (`plugins/` in the source tree, imported as `dermabench_plugins`)
come through the project's own entry points, exactly like a third-party package.
`DERMABENCH_LOAD_PLUGINS=phantom,cnn` loads only the named entry points.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from types import ModuleType

import pluggy

from dermabench import hookspecs
from dermabench.api import PLUGIN_KINDS, Plugin
from dermabench.errors import DermabenchError, PluginError, unknown_name

GROUP = "dermabench"
ALLOW_LIST_ENV = "DERMABENCH_LOAD_PLUGINS"
HOOK_OF_KIND = {
    "generator": "register_generators",
    "classifier": "register_classifiers",
    "dataset": "register_datasets",
    "extractor": "register_extractors",
    "captioner": "register_captioners",
}

pm = pluggy.PluginManager(GROUP)
pm.add_hookspecs(hookspecs)
_loaded = False
#: plugin (entry point) name -> version of the distribution that ships it
_versions: dict[str, str] = {}


def load_plugins() -> pluggy.PluginManager:
    """Import every allowed entry point in group `dermabench` once; later calls do nothing."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    allowed = os.environ.get(ALLOW_LIST_ENV)
    allow = {name.strip() for name in allowed.split(",") if name.strip()} if allowed is not None else None
    for ep in importlib.metadata.entry_points(group=GROUP):
        if allow is not None and ep.name not in allow:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue  # the same entry point seen twice (e.g. an editable and a normal install)
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin '{ep.name}' ({ep.value}) failed to import: {exc}. "
                f"Set {ALLOW_LIST_ENV} to load only the plugins you need."
            ) from exc
        pm.register(module, name=ep.name)
        _versions[ep.name] = ep.dist.version if ep.dist else "unknown"
    # catches misspelt hook names such as `register_generator`
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


@dataclass(frozen=True)
class Registered:
    cls: type[Plugin]
    plugin: str  # name of the plugin (entry point) that registered it
    version: str


def registered(kind: str) -> dict[str, Registered]:
    """Name -> class for one kind ('generator', 'classifier', ...), from every loaded plugin."""
    load_plugins()
    base = PLUGIN_KINDS[kind]
    found: dict[str, Registered] = {}
    hook = getattr(pm.hook, HOOK_OF_KIND[kind])
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or "?"

        def register(cls: type, _plugin: str = plugin_name) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(f"plugin '{_plugin}' registered {cls!r}, which is not a dermabench.{base.__name__}")
            if not cls.name:
                raise PluginError(f"plugin '{_plugin}' registered {cls.__name__} without a `name`")
            if cls.name in found and found[cls.name].cls is not cls:
                raise PluginError(
                    f"{kind} '{cls.name}' is registered twice: by '{found[cls.name].plugin}' and by '{_plugin}'"
                )
            found[cls.name] = Registered(cls, _plugin, plugin_version(_plugin, impl.plugin))

        impl.function(register=register)
    return found


def get(kind: str, name: str) -> Registered:
    """The registered class of a kind by name, or a clear error listing the known names."""
    found = registered(kind)
    if name not in found:
        error = unknown_name(kind, name, found)
        allow_list = os.environ.get(ALLOW_LIST_ENV)
        if allow_list is not None:  # say why a plugin the user has installed may be missing
            installed = {ep.name for ep in importlib.metadata.entry_points(group=GROUP)}
            typos = [item.strip() for item in allow_list.split(",") if item.strip() and item.strip() not in installed]
            hint = f" (no installed plugin is called {', '.join(map(repr, typos))})" if typos else ""
            error = DermabenchError(f"{error} Only the plugins in {ALLOW_LIST_ENV}={allow_list} are loaded{hint}.")
        raise error
    return found[name]


def plugin_version(name: str, module: ModuleType | object) -> str:
    return _versions.get(name) or str(getattr(module, "__version__", "unknown"))


def describe_plugins() -> list[dict]:
    """Name, version, hooks and registered names of every loaded plugin (for `dermabench plugins`)."""
    load_plugins()
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for kind in HOOK_OF_KIND:
        for name, reg in registered(kind).items():
            by_plugin.setdefault(reg.plugin, {}).setdefault(kind, []).append(name)
    rows = []
    for plugin_name, module in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        hooks = sorted(impl.name for impl in pm.get_hookcallers(module) or [])
        rows.append(
            {
                "name": plugin_name,
                "version": plugin_version(plugin_name, module),
                "hooks": hooks,
                "registers": {kind: sorted(names) for kind, names in sorted(by_plugin.get(plugin_name, {}).items())},
            }
        )
    return rows
