"""`age bench`: throughput and peak memory of training, inference and prediction."""
