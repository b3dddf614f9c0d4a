"""Evaluation of a trained model on the test split (rule ``evaluate``, ``distmis evaluate``).

- :mod:`~distmis.evaluate.run`: :func:`~distmis.evaluate.run.evaluate_model`, the stage's API:
  a short orchestrator of the modules below, and the home of the output contract;
- :mod:`~distmis.evaluate.model`: a ``.keras``/``.pt`` file or ``best_model.json`` card → the
  model file, its backend (:mod:`distmis.backends`) and its trial;
- :mod:`~distmis.evaluate.predict`: the model over one split through its backend's predictor
  and record reader, each case thresholded and restored to its source grid; NIfTI writing;
- :mod:`~distmis.evaluate.score`: rows per case and region, their summary, ``metrics.csv``;
- :mod:`~distmis.evaluate.metrics`: Dice and HD95 on boolean masks (pure numpy/scipy);
- :mod:`~distmis.evaluate.restore`: stored (RAS, cropped) arrays back to the source scan's grid,
  voxel spacings, MSD label values, prediction NIfTI files;
- :mod:`~distmis.evaluate.overlay`: contour overlay figures.

No module here imports a framework at import time; the chosen backend imports its own
(TensorFlow for a ``.keras`` model, PyTorch for a ``.pt`` one) when the model is loaded, so the
array functions stay cheap to import and test.
"""
