"""Photos and videos in, ages out: the predictor, the batched pipeline, outputs, run folders, video and tracking."""
