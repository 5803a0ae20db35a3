"""Progress: a clean log without bars off a terminal, `--quiet` silent, `--verbose` with durations and the debug log."""

import io
import logging

from rich.console import Console
from typer.testing import CliRunner

from dermabench.cli import app
from dermabench.progress import ConsoleProgress


class Clock:
    """Advances `step` seconds per reading, so periodic lines come out deterministically."""

    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


def plain_console():
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200, soft_wrap=True), buffer


def test_not_a_terminal_means_plain_lines_with_counts_and_eta():
    console, buffer = plain_console()
    clock = Clock(0.0)

    def slow_items():  # each item takes 4 s
        for i in range(10):
            clock.now += 4.0
            yield i

    progress = ConsoleProgress(console=console, interval=10, clock=clock)
    assert list(progress.track(slow_items(), "generating", total=10)) == list(range(10))
    text = buffer.getvalue()
    assert "\x1b" not in text and "━" not in text  # no colour codes, no bars
    lines = [line.split("s ", 1)[1] for line in text.splitlines()]
    assert lines[0] == "generating"
    assert lines[1:-1] == ["generating: 3/10 (30 %), 12 s, ETA 28 s", "generating: 6/10 (60 %), 24 s, ETA 16 s",
                           "generating: 9/10 (90 %), 36 s, ETA 4 s"]
    assert lines[-1].startswith("generating: done (10 in ")


def test_short_steps_stay_one_line():
    console, buffer = plain_console()
    progress = ConsoleProgress(console=console, clock=Clock(0.001))
    list(progress.track([1, 2, 3], "loading"))
    progress.log("step: split")
    assert [line.split("s ", 1)[1] for line in buffer.getvalue().splitlines()] == ["loading", "step: split"]


def test_quiet_prints_nothing():
    console, buffer = plain_console()
    progress = ConsoleProgress(quiet=True, console=console, verbose=True, clock=Clock(100.0))
    assert list(progress.track(range(5), "training")) == list(range(5))
    progress.log("hello")
    assert buffer.getvalue() == ""


def test_verbose_adds_durations_and_the_debug_log():
    console, buffer = plain_console()
    progress = ConsoleProgress(console=console, verbose=True, clock=Clock(0.5))
    list(progress.track(range(4), "features"))
    logging.getLogger("dermabench_plugins.cnn").debug("epoch %d loss %.2f", 1, 0.25)
    lines = [line.split("s ", 1)[1] for line in buffer.getvalue().splitlines()]
    assert lines[0] == "features" and lines[-2].startswith("features: done (4 in ")
    assert lines[-1] == "debug dermabench_plugins.cnn: epoch 1 loss 0.25"
    # a second verbose console replaces the first as the log's destination instead of doubling lines
    console2, buffer2 = plain_console()
    ConsoleProgress(console=console2, verbose=True)
    logging.getLogger("dermabench").info("once")
    assert buffer2.getvalue().count("once") == 1 and "once" not in buffer.getvalue().split("loss 0.25")[1]


def test_terminal_gets_bars():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    progress = ConsoleProgress(console=console)
    assert progress.bars
    assert list(progress.track(range(3), "fit")) == [0, 1, 2]
    assert not ConsoleProgress(console=Console(file=io.StringIO(), force_terminal=False)).bars


def test_run_and_sweep_have_quiet_and_verbose():
    runner = CliRunner()
    for command in ("run", "sweep"):
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "--quiet" in help_text and "--verbose" in help_text
