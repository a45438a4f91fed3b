"""Training and measuring: the training loop, losses, distillation, calibration, evaluation and leave-one-person-out."""
