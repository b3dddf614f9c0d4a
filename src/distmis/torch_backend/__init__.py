"""PyTorch counterparts of the TensorFlow stages: the 3D U-Net, its loss, a TFRecord reader.

Nothing here imports TensorFlow or Ray, so these modules run on machines that only have
PyTorch (e.g. a GPU node for :mod:`benchmarks.gpu_unet`):

- :mod:`distmis.torch_backend.unet`: :func:`build_unet_torch`, the same architecture and
  parameter count as :func:`distmis.model.unet.build_unet`, channels-first ``(B, C, X, Y, Z)``;
- :mod:`distmis.torch_backend.losses`: :func:`soft_dice_loss`, as :mod:`distmis.model.losses`;
- :mod:`distmis.torch_backend.tfrecord`: reads the shards of :mod:`distmis.data.records`
  (CRC-checked) and serves them as a ``torch.utils.data.IterableDataset``;
- :mod:`distmis.torch_backend.data`: :class:`EpochBatches`, the per-epoch batches of one
  training worker, with the tf.data pipeline's sharding, shuffling, caching and repeating;
- :mod:`distmis.torch_backend.checkpoint`: the saved model (``.pt``: architecture + weights).

The training loop that uses them is :mod:`distmis.train.torch_loop`.

The package itself imports nothing heavy; torch is imported by the modules above.
"""

from __future__ import annotations
