"""What transformers' common model tests check, as this project's own tests (issue 10): every output survives
save_pretrained -> from_pretrained (the loss included, so the teacher too), loading options, config flags, gradients,
the class attributes transformers reads, and the pipelines."""

import copy

import pytest
import torch
from conftest import build_tiny_config
from PIL import Image
from transformers import AutoModelForPreTraining, PreTrainedModel, pipeline, set_seed
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from caev2_hf import (
    CAEv2Backbone,
    CAEv2Config,
    CAEv2ForImageClassification,
    CAEv2ForPreTraining,
    CAEv2ForPreTrainingOutput,
    CAEv2Model,
)
from caev2_hf.optim import build_parameter_groups


HEADS = {
    "encoder": (CAEv2Model, {}),
    "pretraining": (CAEv2ForPreTraining, {}),
    "classifier-mean": (CAEv2ForImageClassification, {"classifier_pooling": "mean", "num_labels": 3}),
    "classifier-cls": (CAEv2ForImageClassification, {"classifier_pooling": "cls", "num_labels": 3}),
}
HEADS_WITH_LOSS = ["pretraining", "classifier-mean", "classifier-cls"]
OUTPUT_CLASSES = {
    "encoder": BaseModelOutputWithPooling,
    "pretraining": CAEv2ForPreTrainingOutput,
    "classifier-mean": ImageClassifierOutput,
    "classifier-cls": ImageClassifierOutput,
}
NUM_LAYERS, NUM_HEADS, WIDTH = 2, 4, 32  # conftest's tiny encoder


def build(name: str, seed: int = 0, **overrides):
    model_class, fields = HEADS[name]
    torch.manual_seed(seed)
    return model_class(build_tiny_config(**{**fields, **overrides}))


def model_inputs(name: str, pixel_values: torch.Tensor, fixed_mask: torch.Tensor) -> dict:
    inputs = {"pixel_values": pixel_values}
    if name == "pretraining":
        inputs["bool_masked_pos"] = fixed_mask
    if name.startswith("classifier"):
        inputs["labels"] = torch.tensor([0, 2, 1])
    return inputs


def flatten(outputs) -> dict[str, torch.Tensor]:
    """Every tensor of a model output, the per-layer tuples unrolled: {"loss": ..., "hidden_states.0": ...}."""
    flat = {}
    for key, value in outputs.items():
        if isinstance(value, tuple):
            flat.update({f"{key}.{index}": tensor for index, tensor in enumerate(value)})
        else:
            flat[key] = value
    return flat


def sequence_length(name: str) -> int:
    return 1 + 16 - 6 if name == "pretraining" else 1 + 16  # the pretraining encoder sees [CLS] + visible patches


@pytest.mark.parametrize("name", list(HEADS))
def test_every_output_survives_save_and_load(name, tmp_path, pixel_values, fixed_mask):
    model = build(name, attn_implementation="eager").eval()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
    inputs = model_inputs(name, pixel_values, fixed_mask)
    with torch.no_grad():
        expected = flatten(model(**inputs, output_hidden_states=True, output_attentions=True))
        actual = flatten(loaded(**inputs, output_hidden_states=True, output_attentions=True))
    assert actual.keys() == expected.keys()
    assert {"hidden_states.2", "attentions.1"} <= expected.keys()
    if name in HEADS_WITH_LOSS:
        assert "loss" in expected
    if name == "pretraining":  # targets from the teacher: it came back with the model, not re-randomised
        assert {"targets", "visible_loss", "masked_loss", "cls_loss"} <= expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", list(HEADS))
def test_two_loads_of_a_folder_hold_identical_tensors(name, tmp_path):
    model = build(name)
    model.save_pretrained(tmp_path)
    first, second = (type(model).from_pretrained(tmp_path) for _ in range(2))
    expected = dict(model.named_parameters()) | dict(model.named_buffers())
    for loaded in (first, second):
        found = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
        assert found.keys() == expected.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(found[key], tensor, rtol=0, atol=0, msg=key)
    # Nothing lives outside the state dict: every parameter (the teacher's included) is saved.
    assert {key for key, _ in model.named_parameters()} <= set(model.state_dict())


@pytest.mark.parametrize("loading", [None, {}, {"dtype": torch.bfloat16}])
def test_teacher_parameters_stay_frozen_and_outside_the_optimizer(loading, tmp_path):
    model = build("pretraining")
    if loading is not None:  # the loader materialises new parameters: they must come back frozen too
        model.save_pretrained(tmp_path)
        model = CAEv2ForPreTraining.from_pretrained(tmp_path, **loading)
    teacher = {f"teacher.{key}" for key, _ in model.teacher.named_parameters()}
    assert teacher and teacher <= {key for key, _ in model.named_parameters()} and teacher <= set(model.state_dict())
    assert not any(parameter.requires_grad for parameter in model.teacher.parameters())
    grouped = {name for group in build_parameter_groups(model, weight_decay=0.05) for name in group["names"]}
    assert grouped == {key for key, parameter in model.named_parameters() if parameter.requires_grad}
    assert grouped and not grouped & teacher
    model.requires_grad_(True).train()  # a blanket unfreeze is undone for the teacher by the next train()/eval()
    assert not any(parameter.requires_grad for parameter in model.teacher.parameters())
    assert model.caev2.embeddings.cls_token.requires_grad and not model.teacher.training


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", HEADS_WITH_LOSS)
def test_loading_in_half_precision_casts_every_submodule(name, dtype, tmp_path, pixel_values, fixed_mask):
    model = build(name).eval()
    model.save_pretrained(tmp_path)
    half = type(model).from_pretrained(tmp_path, dtype=dtype).eval()
    saved = [tensor for tensor in half.state_dict().values() if tensor.is_floating_point()]
    assert {tensor.dtype for tensor in saved} == {dtype}  # the teacher follows the dtype like any submodule
    if name == "pretraining":
        assert half.teacher.model.visual_projection.weight.dtype == dtype
        assert half.teacher.has_weights.dtype == torch.bool
    inputs = model_inputs(name, pixel_values, fixed_mask)
    with torch.no_grad():
        expected = model(**inputs)
    outputs = half(**{**inputs, "pixel_values": pixel_values.to(dtype)})
    assert torch.isfinite(outputs.loss)
    torch.testing.assert_close(outputs.loss.float(), expected.loss, rtol=0, atol=0.05)
    outputs.loss.backward()
    assert all(p.grad is not None for p in half.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "options", [{"output_loading_info": True}, {"low_cpu_mem_usage": True}, {"device_map": "cpu"}]
)
def test_from_pretrained_options_return_the_ordinary_model(options, tmp_path, pixel_values, fixed_mask):
    model = build("pretraining").eval()
    model.save_pretrained(tmp_path)
    loaded = CAEv2ForPreTraining.from_pretrained(tmp_path, **options)
    if options.get("output_loading_info"):
        loaded, info = loaded
        assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert type(loaded) is CAEv2ForPreTraining
    with torch.no_grad():
        expected = model(pixel_values, bool_masked_pos=fixed_mask).loss
        actual = loaded.eval()(pixel_values, bool_masked_pos=fixed_mask).loss
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_auto_class_loads_pretraining_folder_with_its_teacher(tmp_path):
    model = build("pretraining")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert isinstance(loaded, CAEv2ForPreTraining)
    torch.testing.assert_close(
        loaded.teacher.model.visual_projection.weight, model.teacher.model.visual_projection.weight, rtol=0, atol=0
    )


@pytest.mark.parametrize("model_class", [CAEv2Model, CAEv2ForImageClassification])
def test_heads_load_a_pretraining_folder_without_reporting_the_teacher(model_class, tmp_path):
    build("pretraining").save_pretrained(tmp_path)
    logger = logging.get_logger("transformers.modeling_utils")
    logging.set_verbosity_warning()
    with CaptureLogger(logger) as captured:
        _, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == set()
    assert "teacher" not in captured.out and "regressor" not in captured.out


@pytest.mark.parametrize("name", list(HEADS))
def test_config_flags_choose_the_outputs(name, pixel_values, fixed_mask):
    model = build(name, attn_implementation="eager").eval()
    inputs = model_inputs(name, pixel_values, fixed_mask)
    length = sequence_length(name)
    with torch.no_grad():
        plain = model(**inputs)
        assert isinstance(plain, OUTPUT_CLASSES[name])
        assert plain.hidden_states is None and plain.attentions is None
        model.config.output_hidden_states = True
        model.config.output_attentions = True
        outputs = model(**inputs)
        assert len(outputs.hidden_states) == NUM_LAYERS + 1  # each block's input, then the last block's output
        assert all(state.shape == (3, length, WIDTH) for state in outputs.hidden_states)
        assert len(outputs.attentions) == NUM_LAYERS
        assert all(attention.shape == (3, NUM_HEADS, length, length) for attention in outputs.attentions)
        torch.testing.assert_close(outputs.attentions[0].sum(dim=-1), torch.ones(3, NUM_HEADS, length))
        overridden = model(**inputs, output_hidden_states=False, output_attentions=False)  # arguments win
        assert overridden.hidden_states is None and overridden.attentions is None
        model.config.return_dict = False
        as_tuple = model(**inputs)
        assert isinstance(as_tuple, tuple)
        for actual, expected in zip(as_tuple, outputs.to_tuple(), strict=True):
            if isinstance(expected, tuple):
                assert len(actual) == len(expected)
            else:
                torch.testing.assert_close(actual, expected, rtol=0, atol=0)
        assert isinstance(model(**inputs, return_dict=True), OUTPUT_CLASSES[name])


def test_hidden_states_are_the_blocks_inputs_and_output(pixel_values):
    model = build("encoder").eval()
    with torch.no_grad():
        outputs = model(pixel_values, output_hidden_states=True)
        embeddings = model.embeddings(pixel_values)
        first_block, _ = model.encoder.layers[0](embeddings)
        torch.testing.assert_close(outputs.hidden_states[0], embeddings, rtol=0, atol=0)
        torch.testing.assert_close(outputs.hidden_states[1], first_block, rtol=0, atol=0)
        torch.testing.assert_close(model.layernorm(outputs.hidden_states[-1]), outputs.last_hidden_state)


@pytest.mark.parametrize("name", HEADS_WITH_LOSS)
def test_every_trainable_parameter_gets_a_gradient_from_the_loss(name, pixel_values, fixed_mask):
    model = build(name).train()
    model(**model_inputs(name, pixel_values, fixed_mask)).loss.backward()
    trainable = {key: parameter for key, parameter in model.named_parameters() if parameter.requires_grad}
    without = [key for key, parameter in trainable.items() if parameter.grad is None or not parameter.grad.any()]
    assert trainable and not without  # what DDP without find_unused_parameters needs
    if name == "pretraining":
        assert all(parameter.grad is None for parameter in model.teacher.parameters())


@pytest.mark.parametrize("name", ["pretraining", "classifier-mean"])
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients(name, pixel_values, fixed_mask):
    plain, checkpointed = build(name), build(name)
    checkpointed.gradient_checkpointing_enable()
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    inputs = model_inputs(name, pixel_values, fixed_mask)
    calls = {}
    for label, model in (("plain", plain), ("checkpointed", checkpointed)):
        counter = calls.setdefault(label, [])
        model.caev2.encoder.layers[0].mlp.register_forward_hook(lambda *_, counter=counter: counter.append(1))
        model.train()
        model(**inputs).loss.backward()
    assert len(calls["plain"]) == 1 and len(calls["checkpointed"]) == 2  # the block ran again in backward
    for (key, parameter), other in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if parameter.requires_grad:
            torch.testing.assert_close(other.grad, parameter.grad, rtol=1e-5, atol=1e-7, msg=key)


@pytest.mark.parametrize("name", list(HEADS))
def test_class_attributes_transformers_reads(name):
    model = build(name)
    assert model.main_input_name == "pixel_values" and model.base_model_prefix == "caev2"
    assert isinstance(model.base_model, CAEv2Model)
    module_classes = {type(module).__name__ for module in model.modules()}
    own = {"CAEv2Embeddings", "CAEv2Layer"} | ({"CAEv2RegressorLayer"} if name == "pretraining" else set())
    assert own <= set(model._no_split_modules) and own <= module_classes
    assert model._supports_sdpa and model._supports_flash_attn and model._supports_flex_attn
    assert model.supports_gradient_checkpointing


@pytest.mark.parametrize(
    "implementation",
    ["sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)],  # flex compiles: ~1 min on CPU
)
def test_attention_implementations_agree_with_eager(implementation, pixel_values, fixed_mask):
    eager = build("pretraining", attn_implementation="eager").eval()
    other = build("pretraining", attn_implementation=implementation).eval()
    assert other.config._attn_implementation == implementation
    with torch.no_grad():  # flex attention has no backward on the CPU
        expected = eager(pixel_values, bool_masked_pos=fixed_mask)
        actual = other(pixel_values, bool_masked_pos=fixed_mask)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.targets, expected.targets, rtol=0, atol=1e-5)


def test_scalar_or_list_normalisation_statistics(tmp_path):
    config = build_tiny_config(image_mean=0.5, image_std=[0.25, 0.5, 1.0], teacher_image_std=0.3)
    assert config.image_mean == [0.5, 0.5, 0.5] and config.image_std == [0.25, 0.5, 1.0]
    assert config.teacher_image_std == [0.3, 0.3, 0.3]
    model = CAEv2ForPreTraining(config)
    torch.testing.assert_close(model.teacher.input_scale.flatten(), torch.tensor([0.25, 0.5, 1.0]) / 0.3)
    model.config.image_std = 0.2  # set on the config after construction, as a user might
    model.save_pretrained(tmp_path)
    processor = pipeline("image-feature-extraction", model=str(tmp_path)).image_processor
    assert list(processor.image_std) == [0.2, 0.2, 0.2] and list(processor.image_mean) == [0.5, 0.5, 0.5]
    assert CAEv2Config.from_pretrained(tmp_path).image_std == [0.2, 0.2, 0.2]
    with pytest.raises(ValueError, match=r"image_std=\[0.2, 0.3\] has 2 values for num_channels=3"):
        build_tiny_config(image_std=[0.2, 0.3])


def test_image_classification_pipeline_on_a_saved_classifier(tmp_path):
    model = build("classifier-cls", id2label={0: "cat", 1: "dog", 2: "fish"}).eval()
    with torch.no_grad():
        model.pooler.batch_norm.running_mean.normal_()  # a trained probe's statistics, not the identity
    model.save_pretrained(tmp_path)
    image = Image.new("RGB", (48, 40), (200, 30, 60))
    predictions = pipeline("image-classification", model=str(tmp_path), top_k=3)(image)
    assert sorted(prediction["label"] for prediction in predictions) == ["cat", "dog", "fish"]
    processor = pipeline("image-classification", model=str(tmp_path)).image_processor
    with torch.no_grad():
        probabilities = model(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    expected = {model.config.id2label[index]: float(value) for index, value in enumerate(probabilities)}
    assert {prediction["label"]: prediction["score"] for prediction in predictions} == pytest.approx(expected)


def test_image_feature_extraction_pipeline_on_a_saved_encoder(tmp_path):
    model = build("encoder").eval()
    model.save_pretrained(tmp_path)
    image = Image.new("RGB", (40, 48), (20, 130, 60))
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    with torch.no_grad():
        outputs = model(**extractor.image_processor(image, return_tensors="pt"))
    features = torch.tensor(extractor(image))
    torch.testing.assert_close(features, outputs.last_hidden_state, rtol=1e-5, atol=1e-5)
    pooled = torch.tensor(extractor(image, pool=True))
    torch.testing.assert_close(pooled, outputs.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(HEADS))
def test_attention_maps_asked_of_sdpa_warn_how_to_get_them(name, pixel_values, fixed_mask, caplog):
    model = build(name).eval()  # SDPA, the default
    logging.get_logger().warning_once.cache_clear()  # the warning is logged once per process
    with caplog.at_level("WARNING"), torch.no_grad():
        outputs = model(**model_inputs(name, pixel_values, fixed_mask), output_attentions=True)
    assert not outputs.attentions
    assert "attn_implementation='eager'" in caplog.text and "returns no attention maps" in caplog.text


def test_pretraining_keeps_clip_blocks_whole_under_device_map():
    model = build("pretraining")
    assert {"CLIPEncoderLayer", "CAEv2Layer", "CAEv2RegressorLayer"} <= set(model._no_split_modules)


@pytest.mark.parametrize("name", ["encoder", "classifier-cls"])
def test_attention_switch_on_a_model_without_teacher_is_quiet(name):
    model = build(name)
    logger = logging.get_logger("transformers.modeling_utils")
    logging.set_verbosity_warning()
    with CaptureLogger(logger) as captured:
        model.set_attn_implementation("eager")
    assert captured.out == ""
    assert model.config._attn_implementation == "eager" == model.config.teacher_config._attn_implementation


MODEL_CLASSES = {name: model_class for name, (model_class, _) in HEADS.items()} | {"backbone": CAEv2Backbone}


def build_config(name: str) -> CAEv2Config:
    return build_tiny_config(**(HEADS[name][1] if name in HEADS else {"num_hidden_layers": 4}))


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_weights_missing_from_a_checkpoint_start_as_the_constructor_starts_them(name, monkeypatch):
    """`from_pretrained` builds on the meta device and initialises what the checkpoint lacks with `_init_weights`;
    with the same seed before each module's init, that must give every tensor the constructor gives, the teacher's
    patch embedding and CLIP blocks included."""
    original = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        set_seed(0)
        original(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    model_class, config = MODEL_CLASSES[name], build_config(name)
    built = model_class(copy.deepcopy(config)).state_dict()
    loaded = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).state_dict()
    assert loaded.keys() == built.keys()
    assert not [key for key, tensor in loaded.items() if tensor.device.type == "meta"]
    for key, tensor in built.items():
        torch.testing.assert_close(loaded[key], tensor, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", list(MODEL_CLASSES))
def test_a_refused_attention_implementation_changes_no_config(name):
    model = MODEL_CLASSES[name](build_config(name))
    model.set_attn_implementation("eager")
    model.set_attn_implementation("sdpa")
    configs = (model.config, model.config.teacher_config)
    assert [config._attn_implementation for config in configs] == ["sdpa", "sdpa"]
    with pytest.raises(ValueError, match='attn_implementation="foo"` is not supported'):
        model.set_attn_implementation("foo")
    assert [config._attn_implementation for config in configs] == ["sdpa", "sdpa"]
