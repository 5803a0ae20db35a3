"""docs/plugins.md cannot drift: every hook and every public base-class method has a heading with its arguments."""

import inspect
from pathlib import Path

import pytest

import dermabench
from dermabench import hookspecs

DOC = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
HEADINGS = {line[4:].strip().strip("`") for line in DOC.splitlines() if line.startswith("### ")}
BASES = [dermabench.Generator, dermabench.Classifier, dermabench.Dataset, dermabench.FeatureExtractor,
         dermabench.Captioner]  # fmt: skip


def signature_text(function, drop_self=True):
    params = []
    for name, param in inspect.signature(function).parameters.items():
        if drop_self and name == "self":
            continue
        params.append(f"**{name}" if param.kind is param.VAR_KEYWORD else name)
    return ", ".join(params)


HOOKS = [name for name in dir(hookspecs) if name.startswith("register_")]
METHODS = [
    (base, name)
    for base in BASES
    for name, member in vars(base).items()
    if callable(member) and (not name.startswith("_") or name == "__init__")
]


def test_there_is_something_to_check():
    assert len(HOOKS) == 5
    assert len(METHODS) >= 8


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_arguments(hook):
    expected = f"{hook}({signature_text(getattr(hookspecs, hook), drop_self=False)})"
    assert expected in HEADINGS, f"docs/plugins.md lacks a heading `{expected}`"


@pytest.mark.parametrize("base, method", METHODS, ids=lambda item: getattr(item, "__name__", item))
def test_every_base_class_method_is_documented_with_its_arguments(base, method):
    expected = f"{base.__name__}.{method}({signature_text(getattr(base, method))})"
    assert expected in HEADINGS, f"docs/plugins.md lacks a heading `{expected}`"


def test_the_example_plugin_in_the_docs_works(tmp_path):
    """The two-file example is real code: run its module and generate with it."""
    source = DOC.split("`dermabench_noise.py`:\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(source, "dermabench_noise.py", "exec"), namespace)
    generator = namespace["NoiseGenerator"](contrast="0.5")
    prompts = [dermabench.Prompt("x", 0, seed) for seed in (1, 2, 1)]
    images = list(generator.generate(prompts, dermabench.RunContext(image_size=32)))
    assert [im.size for im in images] == [(32, 32)] * 3
    assert images[0].tobytes() == images[2].tobytes() != images[1].tobytes()
    with pytest.raises(dermabench.DermabenchError, match="unknown option 'contras'.*Did you mean 'contrast'"):
        namespace["NoiseGenerator"](contras="0.5")
