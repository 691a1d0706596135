"""Evaluating an encoder: frozen feature extraction, labelled data, the linear probe (the authors' LARS protocol
and a cached-feature fast protocol), Trainer fine-tuning and top-k metrics."""
