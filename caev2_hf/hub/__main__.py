"""`python -m caev2_hf.hub prepare|push ...`: the command `caev2-hub`, which starts faster (it parses before it
imports torch); see caev2_hf/hub/publish.py."""

from caev2_hf_cli.hub import parse_publish_arguments
from caev2_hf_cli.parsing import run_command

from .publish import main


run_command(main, run_command(parse_publish_arguments))
