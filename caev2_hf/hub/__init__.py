"""The Hub side: model cards, ready-to-push folders and their upload (`python -m caev2_hf.hub prepare|push`), and the
converter between the authors' checkpoints and this package's folders."""
