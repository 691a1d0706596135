"""Evaluating an encoder, one folder per job: `classification/` (linear probe and fine-tuning) and `segmentation/`
(UperNet). Here: the scripts' argument dataclasses and what the Trainer-based jobs share."""
