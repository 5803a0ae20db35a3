"""The hooks a dermabench plugin may implement. Each is a collector: call `register(cls)`."""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("dermabench")
hookimpl = HookimplMarker("dermabench")


@hookspec
def register_generators(register):
    """Register `Generator` subclasses: `register(MyGenerator)`."""


@hookspec
def register_classifiers(register):
    """Register `Classifier` subclasses: `register(MyClassifier)`."""


@hookspec
def register_datasets(register):
    """Register `Dataset` subclasses: `register(MyDataset)`."""


@hookspec
def register_extractors(register):
    """Register `FeatureExtractor` subclasses (FID/KID backbones): `register(MyExtractor)`."""


@hookspec
def register_captioners(register):
    """Register `Captioner` subclasses: `register(MyCaptioner)`."""
