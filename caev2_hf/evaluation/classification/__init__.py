"""Image classification of an encoder: the linear probe (the authors' protocol and a cached-feature fast one) and
Trainer fine-tuning, on labelled image data, scored by top-1 / top-5 accuracy."""
