"""report.html of one slide: the overlay with the tumour regions outlined, and its figures;
self-contained (the image is embedded), no script, no network."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from histodetect.slides.heatmap import colour_stops

REPORT_SIDE_PX = 1024
"""Longest side of the overlay embedded in the report (JPEG, to keep the page small)."""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; max-width: 72rem; }
.figure { position: relative; display: inline-block; max-width: 100%; }
.figure svg { width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin-top: 1rem; }
td, th { padding: 0.2rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }
.legend { height: 0.8rem; width: 16rem; display: inline-block; vertical-align: middle; }
.note { color: #666; font-size: 0.9rem; }
"""


def render_report(
    summary: dict[str, Any],
    overlay: np.ndarray,
    geojson: dict[str, Any],
    extent: tuple[float, float],
) -> str:
    """The page as a string.

    Args:
        summary: `outputs.summarise` of the slide.
        overlay: uint8 (h, w, 3) overlay image of the whole slide.
        geojson: the regions FeatureCollection (level-0 pixel coordinates).
        extent: (width, height) in level-0 pixels that the overlay image spans.
    """
    width, height = extent
    image = _jpeg_data_uri(overlay)
    outlines = "\n".join(_svg_path(f["geometry"]) for f in geojson["features"])
    stops = ", ".join(colour_stops())
    name = html.escape(str(summary["slide"]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>histodetect slide: {name}</title>
<style>{_STYLE}</style></head><body>
<h1>Tumour heatmap: {name}</h1>
<p class="note">Research use only, not a diagnosis. Heatmap: calibrated tumour probability per
{summary["stride_px"]} px cell at {summary["model_mpp"]:g} µm/px
<span class="legend" style="background: linear-gradient(to right, {stops})"></span> 0 to 1;
outlined in green: tumour regions (probability &ge; {summary["threshold"]:.3f}).</p>
<div class="figure"><svg viewBox="0 0 {width:.1f} {height:.1f}" xmlns="http://www.w3.org/2000/svg">
<image href="{image}" x="0" y="0" width="{width:.1f}" height="{height:.1f}" preserveAspectRatio="none"/>
<g fill="none" stroke="#00e000" stroke-width="2" vector-effect="non-scaling-stroke">
{outlines}
</g></svg></div>
{_figures_table(summary)}
</body></html>
"""


def _figures_table(summary: dict[str, Any]) -> str:
    model = summary["model"]
    seconds, rates = summary["seconds"], summary["tiles_per_s"]
    rows = [
        ("max probability", f"{summary['max_probability']:.3f}"),
        ("tumour area", f"{summary['tumour_area_mm2']:.3f} mm² "
                        f"({100 * summary['tumour_fraction_of_tissue']:.1f}% of tissue)"),
        ("tissue scored", f"{summary['tissue_area_mm2']:.2f} mm², {summary['n_tiles']} tiles"),
        ("tumour regions", f"{summary['n_regions']} (largest {summary['largest_region_mm2']:.3f} mm²)"),
        ("resolution", f"slide {summary['slide_mpp']:g} µm/px ({summary['slide_mpp_source']}), "
                       f"level {summary['level_read']} read, resampled x{summary['resample_factor']:g}"),
        ("model", f"{model['name']} ({model['path']}), threshold {summary['threshold']:.3f}"
                  f"{', TTA x8' if model['tta'] else ''}, {model['device']}"),
        ("time", f"{seconds['total_s']:.1f} s: masking {seconds['masking_s']:.1f} s, reading "
                 f"{seconds['reading_s']:.1f} s, inference {seconds['inference_s']:.1f} s"),
        ("throughput", f"{rates['overall']} tiles/s overall"),
    ]  # fmt: skip
    body = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>\n{body}\n</table>"


def _svg_path(geometry: dict[str, Any]) -> str:
    polygons = (
        geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    )
    parts = []
    for rings in polygons:
        for ring in rings:
            points = " L ".join(f"{x:.1f} {y:.1f}" for x, y in ring)
            parts.append(f"M {points} Z")
    return f'<path d="{" ".join(parts)}"/>'


def _jpeg_data_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((REPORT_SIDE_PX, REPORT_SIDE_PX), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
