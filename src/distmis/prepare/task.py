"""What MSD's Task01_BrainTumour holds and what the conversion stores of it, known without
reading a file: light on purpose (no nibabel, no numpy), because the workflow's rule files read
it at parse time in every rule's env, the plotting env included."""

from __future__ import annotations

# Cases in the Medical Segmentation Decathlon's Task01_BrainTumour training set.
MSD_BRATS_CASES = 484
# Modalities per case (FLAIR, T1w, t1gd, T2w), the last axis of every stored image.
EXPECTED_CHANNELS = 4
# Every Task01 scan's grid.
MSD_SCAN_SHAPE = (240, 240, 155)
# The label channels each `data.preprocess.labels` mode stores.
LABEL_MODES = {
    # The original DistMIS trained tumour-vs-background.
    "binary": ("tumour",),
    # BraTS evaluation regions, nested: ET ⊂ TC ⊂ WT.
    "regions": ("WT", "TC", "ET"),
}
