"""Plugins defined inside a test module, registered with the host's plugin manager for as long as a test needs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dermabench import plugins
from dermabench.api import Progress


@contextmanager
def registered_plugin(plugin: object, name: str) -> Iterator[object]:
    """`plugin`'s hook implementations (`register_generators`, ...) are live inside the block, gone after it."""
    plugins.load_plugins()  # the built-ins first: a test plugin is registered beside them, never instead
    plugins.pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        plugins.pm.unregister(plugin)


class RecordedProgress(Progress):
    """A progress reporter that keeps every logged line in `lines`, for tests of what a run says."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)
