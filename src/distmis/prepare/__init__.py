"""Getting BraTS (or an offline synthetic stand-in) and converting it to TFRecord shards: the
write side, which only the CLI and the data rules use."""
