"""`python -m caev2_hf.hub prepare|push ...`: see caev2_hf/hub/publish.py."""

from .publish import main


main()
