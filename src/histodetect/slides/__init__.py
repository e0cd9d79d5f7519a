"""Whole-slide images: readers (OpenSlide, tifffile, Pillow), tissue mask, tiling, heatmaps and regions.

Nothing heavy is imported here; `histodetect slide` (cli/slide.py) drives `runner.run_slides`.
"""

BACKENDS = ("auto", "openslide", "tifffile", "pil")
"""Slide reader backends (`--reader`); "auto" picks one per file (see `reader.open_slide`)."""
