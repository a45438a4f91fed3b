"""Data from disk to crops: dataset readers, image decoding, face detection, the crop geometry, the one
`Preprocess` type, the manifest and the crop cache."""
