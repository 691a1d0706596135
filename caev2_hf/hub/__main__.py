"""`python -m caev2_hf.hub prepare|push ...`: see caev2_hf/hub/publish.py."""

from ..cli import run_main
from .publish import main


run_main(main)
