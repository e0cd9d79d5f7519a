"""Explanations of single patches: Grad-CAM over every model family's features stage.

`gradcam_overlays(model, spec, pixels)` gives RGB overlays for galleries; `histodetect explain`
(cli/explain.py) writes them for patch files through `explanations.explain_inputs`.
"""
