"""CAE v2 for transformers: importing this package registers the model with the Auto classes.

The classes are imported on first use (`from caev2_hf import CAEv2Model`), and the registration with AutoConfig /
AutoModel / ... is made as soon as transformers' Auto classes or this package's model are imported, whichever comes
first (at once when they already are). So `import caev2_hf` followed by `AutoModel.from_pretrained(...)` works as
before, while the command-line scripts, which import only `caev2_hf.cli` and their argument dataclasses before they
parse, answer `--help` and refuse a bad argument without importing torch.
"""

import importlib
import importlib.abc
import sys


__version__ = "0.1.0"

# name -> the module (of this package) that defines it
_LAZY_ATTRIBUTES = {
    "CAEV2_PRESETS": "configuration_caev2",
    "CAEv2Config": "configuration_caev2",
    "CAEv2ForImageClassification": "modeling_caev2",
    "CAEv2ForPreTraining": "modeling_caev2",
    "CAEv2ForPreTrainingOutput": "modeling_caev2",
    "CAEv2Model": "modeling_caev2",
    "CAEv2PreTrainedModel": "modeling_caev2",
    "CAEv2Backbone": "modeling_caev2_backbone",
}
# Once one of these is loaded, the Auto classes may be asked for CAE v2 (or a CAE v2 model may be saved).
_TRIGGERS = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    f"{__name__}.configuration_caev2",
    f"{__name__}.modeling_caev2",
    f"{__name__}.modeling_caev2_backbone",
)
_WATCHED_PACKAGES = ("transformers", "torch", __name__)  # these packages and all their modules
# `loading`: watched modules executing now (importing more of them meanwhile could meet one half-initialised).
_state = {"registered": False, "registering": False, "loading": 0}


def _register_auto_classes() -> None:
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForPreTraining,
    )

    from .configuration_caev2 import CAEv2Config
    from .modeling_caev2 import CAEv2ForImageClassification, CAEv2ForPreTraining, CAEv2Model
    from .modeling_caev2_backbone import CAEv2Backbone

    AutoConfig.register(CAEv2Config.model_type, CAEv2Config, exist_ok=True)
    AutoModel.register(CAEv2Config, CAEv2Model, exist_ok=True)
    AutoModelForPreTraining.register(CAEv2Config, CAEv2ForPreTraining, exist_ok=True)
    AutoModelForImageClassification.register(CAEv2Config, CAEv2ForImageClassification, exist_ok=True)
    AutoBackbone.register(CAEv2Config, CAEv2Backbone, exist_ok=True)

    # save_pretrained() then writes `auto_map` and copies the two code files, so a saved folder also loads with
    # trust_remote_code=True where this package is not installed.
    CAEv2Config.register_for_auto_class()
    CAEv2Model.register_for_auto_class("AutoModel")
    CAEv2ForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    CAEv2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    CAEv2Backbone.register_for_auto_class("AutoBackbone")  # its folder also gets modeling_caev2_backbone.py


def _register_when_possible() -> None:
    if _state["registered"] or _state["registering"]:
        return
    if _state["loading"] or not any(name in sys.modules for name in _TRIGGERS):
        return
    _state["registering"] = True
    try:
        _register_auto_classes()
        _state["registered"] = True
    finally:
        _state["registering"] = False
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


class _RegisterAfterImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wraps the loader of every transformers / torch / caev2_hf module imported until the registration is made,
    and tries the registration each time one of them has finished executing and none is still executing."""

    def find_spec(self, fullname, path, target=None):
        if _state["registered"] or fullname.partition(".")[0] not in _WATCHED_PACKAGES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _WrappedLoader(spec.loader)
                return spec
        return None


class _WrappedLoader(importlib.abc.Loader):
    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        _state["loading"] += 1
        try:
            self.loader.exec_module(module)
        finally:
            _state["loading"] -= 1
        _register_when_possible()

    def __getattr__(self, name):  # get_resource_reader, is_package, get_source, ...: the real loader's
        return getattr(self.loader, name)


_FINDER = _RegisterAfterImport()
sys.meta_path.insert(0, _FINDER)
_register_when_possible()  # transformers' Auto classes may be loaded already


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
        _register_when_possible()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_ATTRIBUTES])


__all__ = [
    "CAEV2_PRESETS",
    "CAEv2Backbone",
    "CAEv2Config",
    "CAEv2ForImageClassification",
    "CAEv2ForPreTraining",
    "CAEv2ForPreTrainingOutput",
    "CAEv2Model",
    "CAEv2PreTrainedModel",
]
