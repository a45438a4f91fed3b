"""The process a job runs in: device, threads, torchrun ranks, seeds and library versions."""
