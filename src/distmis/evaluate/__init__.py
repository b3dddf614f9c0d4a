"""Evaluation of a trained model on the test split (rule ``evaluate``, ``distmis evaluate``).

- :mod:`~distmis.evaluate.metrics`: Dice and HD95 on boolean masks (pure numpy/scipy).
- :mod:`~distmis.evaluate.restore`: stored (RAS, cropped) arrays back to the source scan's grid,
  MSD label values, prediction NIfTI files.
- :mod:`~distmis.evaluate.overlay`: contour overlay figures.
- :mod:`~distmis.evaluate.run`: :func:`~distmis.evaluate.run.evaluate_model`, the stage's API.

Only ``run`` imports a framework, and only the model's: TensorFlow for a ``.keras`` model,
PyTorch for a ``.pt`` one; the array functions stay cheap to import and test.
"""
