"""Tested hyperparameters, shipped with the package. Copy one, edit it, pass it as --preset FILE.yaml."""
