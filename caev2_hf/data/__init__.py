"""Images in, uint8 crops and masks out: opening streams (Hub, image folders, shards), decoding, transforms, the
block / random mask generators, the pretraining batch stream with its resume position, and the errors a stream
raises. Shared by pretraining and evaluation; imports only the model layer."""
