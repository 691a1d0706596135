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
    packages=find_packages(include=["caev2_hf", "caev2_hf.*"]),
    include_package_data=True,
    package_data={"caev2_hf": ["evaluation/accuracy_topk/*.py", "hub/model_card_template.md"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=5.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "evaluate>=0.4",
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-timeout", "ruff", "scikit-learn"],
        "timm": ["timm"],
    },
)
