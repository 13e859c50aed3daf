"""A mask's legend: class colours and names in the forms GDAL and QGIS read.

- a colour table (palette) inside the GeoTIFF: every GDAL reader colours the mask;
- ``NAME.qml`` beside ``NAME.tif``: the QGIS style (a "paletted" renderer with one labelled entry
  per class), which QGIS loads by default when it opens the mask;
- ``NAME.tif.aux.xml``: GDAL's side-car metadata (PAM) with the band's category names, which
  ``gdalinfo`` lists and QGIS uses as labels. A TIFF cannot hold category names itself and
  rasterio has no call to set them, so they are written here in GDAL's documented PAM format.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from segtile.models.card import ModelCard

_QGIS_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
_QGIS_VERSION = "3.28.0"  # the oldest QGIS long-term release this style was written for


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as three integers 0–255."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def colour_table(card: ModelCard, nodata: int) -> dict[int, tuple[int, int, int, int]]:
    """Value -> RGBA for ``write_colormap``: each class opaque in its colour, ``nodata`` transparent."""
    table = {index: (*rgb(colour), 255) for index, colour in enumerate(card.colors)}
    table[nodata] = (0, 0, 0, 0)
    return table


def qgis_style(card: ModelCard) -> str:
    """A QGIS layer style (``.qml``) drawing band 1 with the card's colours and class names."""
    root = ET.Element("qgis", version=_QGIS_VERSION, styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                             alphaBand="-1", nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for index, (name, colour) in enumerate(zip(card.classes, card.colors)):
        ET.SubElement(palette, "paletteEntry", value=str(index), color=colour.lower(),
                      alpha="255", label=name)
    ET.indent(root)
    return _QGIS_DOCTYPE + ET.tostring(root, encoding="unicode") + "\n"


def category_names(card: ModelCard) -> str:
    """GDAL PAM metadata (``.aux.xml``) naming band 1's values after the card's classes."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for name in card.classes:
        ET.SubElement(categories, "Category").text = name
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qgis_style_path(raster: Path) -> Path:
    """Where QGIS looks for a raster's default style: ``mask.tif`` -> ``mask.qml``."""
    return raster.with_suffix(".qml")


def legend_sidecars(raster: Path) -> list[Path]:
    """The files :func:`write_legend_sidecars` writes beside ``raster``."""
    return [qgis_style_path(raster), raster.with_name(raster.name + ".aux.xml")]


def write_legend_sidecars(raster: Path, card: ModelCard) -> None:
    """Write the QGIS style and the GDAL category names beside ``raster``."""
    style, categories = legend_sidecars(raster)
    style.write_text(qgis_style(card), encoding="utf-8")
    categories.write_text(category_names(card), encoding="utf-8")
