"""The README's set-up commands are the ones CI runs, and the README names what exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def setup_commands():
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line and not line.startswith("#")]


def test_two_setup_commands_main_job_then_tests():
    main_job, tests = setup_commands()
    assert main_job.endswith("dermabench run")
    assert tests.endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, tests = setup_commands()
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_builtin_plugin_is_in_the_readme():
    from dermabench import plugins

    for kind in ("generator", "classifier", "dataset", "extractor", "captioner"):
        for name in plugins.registered(kind):
            assert f"`{name}`" in README, f"README does not mention the {kind} `{name}`"
