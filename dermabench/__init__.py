"""dermabench: do synthetic skin-lesion images make a classifier better, and how real do they look?

The public plugin API lives here; see docs/plugins.md.
"""

from dermabench.api import (
    BENIGN,
    LABEL_NAMES,
    MALIGNANT,
    Captioner,
    Classifier,
    Dataset,
    FeatureExtractor,
    Generator,
    Progress,
    Prompt,
    RunContext,
    Sample,
)
from dermabench.errors import DermabenchError, PluginError
from dermabench.hookspecs import hookimpl
from dermabench.options import Option, parse_options

__version__ = "0.1.0"

__all__ = [
    "BENIGN",
    "LABEL_NAMES",
    "MALIGNANT",
    "Option",
    "Captioner",
    "Classifier",
    "Dataset",
    "DermabenchError",
    "FeatureExtractor",
    "Generator",
    "PluginError",
    "Progress",
    "Prompt",
    "RunContext",
    "Sample",
    "hookimpl",
    "parse_options",
    "__version__",
]
