"""Data stage: get BraTS (or a synthetic stand-in) and convert it to TFRecord shards."""
