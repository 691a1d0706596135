"""caev2_hf: CAE v2 (masked image modeling with a frozen CLIP teacher) for HuggingFace transformers."""

from pathlib import Path

from setuptools import find_packages, setup


setup(
    name="caev2_hf",
    version="0.1.0",
    description="CAE v2: Context Autoencoder with CLIP target, as a transformers model with Accelerate training",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["caev2_hf", "caev2_hf.*", "caev2_hf_cli", "caev2_hf_cli.*"]),
    py_modules=["caev2_hf_commands"],
    # Each command parses its arguments in the light caev2_hf_cli before it imports torch (caev2_hf_commands.py);
    # `python -m caev2_hf.visualize` etc. run the same commands, slower to start.
    entry_points={
        "console_scripts": [
            "caev2-visualize = caev2_hf_commands:visualize",
            "caev2-hub = caev2_hf_commands:hub",
            "caev2-convert-checkpoint = caev2_hf_commands:convert_checkpoint",
            "caev2-model-cards = caev2_hf_commands:model_cards",
            "caev2-study = caev2_hf_commands:study",
        ]
    },
    include_package_data=True,
    package_data={"caev2_hf": ["evaluation/segmentation/mean_iou/*.py", "hub/model_card_template.md"]},
    # Ranges: each lower bound is the version the tests run with on the development machine, which is what a fresh
    # `pip install -e ".[dev]"` got on 2026-11-26 (.ci/run installs afresh each time, so CI tests the newest versions
    # in range; torch 2.11 and transformers 5.17 also ran the GPU benchmarks); each upper bound is the next major
    # release (the next minor for a 0.x package), not yet tested.
    install_requires=[
        "torch>=2.11,<3",
        "torchvision>=0.26,<1",
        "transformers>=5.17,<6",
        "accelerate>=1.15,<2",
        "datasets>=5.2,<6",
        "safetensors>=0.8,<0.9",
        "huggingface_hub>=2.4,<3",
        "evaluate>=0.4.6,<0.5",
        "numpy>=2.4,<3",
        "pillow>=13.0,<14",
        "pyyaml>=6.0,<7",
        "tqdm>=4.70,<5",
        "tensorboard>=2.21,<3",
        # detection and instance segmentation: COCO's evaluator and mask encoding, and the Hungarian matching that
        # transformers' LW-DETR loss needs
        "pycocotools>=2.0.11,<3",
        "scipy>=1.17,<2",
    ],
    extras_require={
        # pytest 9.2 is what a fresh install gets (its approx() refuses nested dicts; the tests allow for it)
        "dev": [
            "pytest>=9.2,<10",
            "pytest-timeout>=2.4,<3",
            "ruff>=0.17.6,<0.18",
            "scikit-learn>=1.9,<2",
            "matplotlib>=3.11,<4",
        ],
        "plots": ["matplotlib>=3.11,<4"],
    },
)
