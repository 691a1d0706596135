"""CAE v2 for transformers: importing this package registers the model with the Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

from .configuration_caev2 import CAEV2_PRESETS, CAEv2Config
from .modeling_caev2 import (
    CAEv2ForImageClassification,
    CAEv2ForPreTraining,
    CAEv2ForPreTrainingOutput,
    CAEv2Model,
    CAEv2PreTrainedModel,
)


__version__ = "0.1.0"

AutoConfig.register(CAEv2Config.model_type, CAEv2Config, exist_ok=True)
AutoModel.register(CAEv2Config, CAEv2Model, exist_ok=True)
AutoModelForPreTraining.register(CAEv2Config, CAEv2ForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(CAEv2Config, CAEv2ForImageClassification, exist_ok=True)

# save_pretrained() then writes `auto_map` and copies the two code files, so a saved folder also loads with
# trust_remote_code=True where this package is not installed.
CAEv2Config.register_for_auto_class()
CAEv2Model.register_for_auto_class("AutoModel")
CAEv2ForPreTraining.register_for_auto_class("AutoModelForPreTraining")
CAEv2ForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = [
    "CAEV2_PRESETS",
    "CAEv2Config",
    "CAEv2ForImageClassification",
    "CAEv2ForPreTraining",
    "CAEv2ForPreTrainingOutput",
    "CAEv2Model",
    "CAEv2PreTrainedModel",
]
