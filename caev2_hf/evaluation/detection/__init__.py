"""Object detection from a CAE v2 encoder: LW-DETR built around the encoder, COCO-format data, COCO metrics."""
