"""Dataset readers and image decoding."""
