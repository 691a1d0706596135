"""The Hub side: model cards, ready-to-push folders and their upload (`caev2-hub prepare|push`), and the
converter between the authors' checkpoints and this package's folders."""
