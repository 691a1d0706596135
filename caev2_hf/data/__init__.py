"""Images in, uint8 crops and masks out: opening streams (Hub, image folders, shards), decoding, transforms and the
block / random mask generators. Shared by pretraining and evaluation; imports only the model layer."""
