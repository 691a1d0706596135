"""Semantic segmentation with UperNet on a CAE v2 backbone, the authors' ADE20K protocol (docs/segmentation.md): the
model, its data and augmentation, the Trainer with sliding-window evaluation, and mIoU."""
