"""agecli: age estimation from face photos, from raw dataset to exported model."""

__version__ = "0.1.0"
