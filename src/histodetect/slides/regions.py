"""Tumour regions: cells at or above the model's threshold joined into polygons (shapely), as
GeoJSON in level-0 pixel coordinates that QuPath imports as annotations."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from scipy import ndimage

from histodetect.errors import HistodetectError

INSTALL_HINT = "pip install -c constraints.txt -e '.[slides]'"
CLASSIFICATION = {"name": "Tumor", "color": [200, 0, 0]}
"""QuPath's built-in tumour class (name and RGB colour)."""


def require_shapely() -> ModuleType:
    """The `shapely` module, or a clear error naming the extra to install."""
    try:
        import shapely  # optional dependency: the `slides` extra
    except ImportError:
        raise HistodetectError(
            f"histodetect slide needs shapely for the tumour regions: {INSTALL_HINT}."
        ) from None
    return shapely


@dataclass(frozen=True)
class Region:
    """One connected tumour region.

    Attributes:
        polygon: shapely Polygon in level-0 pixels (holes where negative cells are enclosed).
        n_cells: cells in the region.
        area_mm2: area in mm².
        max_probability, mean_probability: over the region's cells.
    """

    polygon: Any
    n_cells: int
    area_mm2: float
    max_probability: float
    mean_probability: float


def tumour_regions(
    probabilities: np.ndarray, threshold: float, cell_level0_px: float, cell_area_mm2: float
) -> list[Region]:
    """Regions of 4-connected cells with probability >= `threshold`, largest first.

    Args:
        probabilities: float (n_rows, n_cols), NaN for cells not scored.
        cell_level0_px: cell side in level-0 pixels.
        cell_area_mm2: area of one cell.
    """
    shapely = require_shapely()
    from shapely.affinity import scale
    from shapely.geometry import polygon as polygons

    positive = np.nan_to_num(probabilities, nan=-1.0) >= threshold
    labels, _ = ndimage.label(positive)  # 4-connectivity, as cells touching at a corner do not join
    regions = []
    for index, cells in enumerate(ndimage.find_objects(labels), start=1):
        assert cells is not None
        inside = labels[cells] == index
        rows, cols = np.nonzero(inside)
        boxes = shapely.box(cols + cells[1].start, rows + cells[0].start,
                            cols + cells[1].start + 1, rows + cells[0].start + 1)  # fmt: skip
        shape = shapely.union_all(boxes).simplify(0)  # drop the vertices where cells meet
        shape = scale(shape, cell_level0_px, cell_level0_px, origin=(0, 0))
        if shape.geom_type == "Polygon":  # counter-clockwise shell, as RFC 7946 asks
            shape = polygons.orient(shape, 1.0)
        values = probabilities[cells][inside]
        regions.append(Region(shape, len(rows), len(rows) * cell_area_mm2,
                              float(values.max()), float(values.mean())))  # fmt: skip
    return sorted(regions, key=lambda region: -region.n_cells)


def regions_geojson(regions: list[Region]) -> dict[str, Any]:
    """A GeoJSON FeatureCollection, one annotation Feature per region (QuPath's layout)."""
    from shapely.geometry import mapping

    features = []
    for number, region in enumerate(regions, start=1):
        features.append({
            "type": "Feature",
            "geometry": mapping(region.polygon),
            "properties": {
                "objectType": "annotation",
                "name": f"tumour region {number}",
                "classification": CLASSIFICATION,
                "measurements": {
                    "area_mm2": round(region.area_mm2, 6),
                    "cells": region.n_cells,
                    "max_probability": round(region.max_probability, 6),
                    "mean_probability": round(region.mean_probability, 6),
                },
            },
        })  # fmt: skip
    return {"type": "FeatureCollection", "features": features}
