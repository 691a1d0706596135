"""CAE v2 for transformers: importing this package registers the model with the Auto classes.

After `import caev2_hf`, `AutoConfig`, `AutoModel`, `AutoModelForPreTraining`, `AutoModelForImageClassification` and
`AutoBackbone` load CAE v2 folders, and `save_pretrained` writes the `auto_map` and code files that let a folder load
with `trust_remote_code=True` where this package is not installed. Importing it imports torch (a few seconds): the
commands' arguments live in the light package `caev2_hf_cli`, so `--help` does not wait for it.
"""

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_caev2 import CAEV2_PRESETS, CAEv2Config, CAEv2UperNetConfig
from .modeling_caev2 import (
    CAEv2ForImageClassification,
    CAEv2ForPreTraining,
    CAEv2ForPreTrainingOutput,
    CAEv2Model,
    CAEv2PreTrainedModel,
)
from .modeling_caev2_backbone import CAEv2Backbone, CAEv2UperNetForSemanticSegmentation


__version__ = "0.1.0"

AutoConfig.register(CAEv2Config.model_type, CAEv2Config, exist_ok=True)
AutoModel.register(CAEv2Config, CAEv2Model, exist_ok=True)
AutoModelForPreTraining.register(CAEv2Config, CAEv2ForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(CAEv2Config, CAEv2ForImageClassification, exist_ok=True)
AutoBackbone.register(CAEv2Config, CAEv2Backbone, exist_ok=True)

# save_pretrained() then writes `auto_map` and copies the code files, so a saved folder also loads with
# trust_remote_code=True where this package is not installed.
CAEv2Config.register_for_auto_class()
CAEv2Model.register_for_auto_class("AutoModel")
CAEv2ForPreTraining.register_for_auto_class("AutoModelForPreTraining")
CAEv2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")
CAEv2Backbone.register_for_auto_class("AutoBackbone")  # its folder also gets modeling_caev2_backbone.py
# A segmentation folder: "upernet" stays transformers' own model type, these classes are named in auto_map only.
CAEv2UperNetConfig.register_for_auto_class()
CAEv2UperNetForSemanticSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")

__all__ = [
    "CAEV2_PRESETS",
    "CAEv2Backbone",
    "CAEv2Config",
    "CAEv2ForImageClassification",
    "CAEv2ForPreTraining",
    "CAEv2ForPreTrainingOutput",
    "CAEv2Model",
    "CAEv2PreTrainedModel",
    "CAEv2UperNetConfig",
    "CAEv2UperNetForSemanticSegmentation",
]
