"""The legend of an output: class colours and names in the forms GDAL and QGIS read.

For a mask:

- a colour table (palette) inside the GeoTIFF: every GDAL reader colours the mask;
- ``NAME.qml`` beside ``NAME.tif``: the QGIS style (a "paletted" renderer with one labelled entry
  per class), which QGIS loads by default when it opens the mask;
- ``NAME.tif.aux.xml``: GDAL's side-car metadata (PAM) with the band's category names, which
  ``gdalinfo`` lists and QGIS uses as labels. A TIFF cannot hold category names itself and
  rasterio has no call to set them, so they are written here in GDAL's documented PAM format.

For polygons, a QGIS style that colours them by ``class_name`` ("categorized" renderer), stored
where QGIS looks for a layer's default style: in a GeoPackage, as the layer's default row of the
``layer_styles`` table (the table QGIS itself writes for *Style ▸ Save as Default*); beside any
other format, as ``NAME.qml``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pyogrio import read_info
from pyogrio.raw import write as ogr_write

from segtile.models.card import ModelCard

_QGIS_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
_QGIS_VERSION = "3.28.0"  # the oldest QGIS long-term release this style was written for
_OUTLINE_SHADE = 0.6  # polygon outlines: the class colour darkened to this fraction


def rgb(colour: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` as three integers 0–255."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def rgb_palette(card: ModelCard, size: int) -> np.ndarray:
    """Label value -> RGB as a ``(size, 3)`` uint8 lookup table: each class in its colour,
    black elsewhere (nodata)."""
    palette = np.zeros((size, 3), dtype=np.uint8)
    for index, colour in enumerate(card.colors):
        palette[index] = rgb(colour)
    return palette


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
    return _qml_text(root)


def polygon_style(card: ModelCard, field: str = "class_name") -> str:
    """A QGIS layer style (``.qml``) colouring polygons by ``field``: one category per class of
    the card, filled with its colour and outlined in a darker shade of it, labelled with its name."""
    root = ET.Element("qgis", version=_QGIS_VERSION, styleCategories="Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field,
                             symbollevels="0", forceraster="0", enableorderby="0")
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, (name, colour) in enumerate(zip(card.classes, card.colors)):
        ET.SubElement(categories, "category", value=name, label=name, symbol=str(index), render="true")
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(index), alpha="1",
                               clip_to_extent="1", force_rhr="0")
        fill = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"})
        red, green, blue = rgb(colour)
        outline = (round(red * _OUTLINE_SHADE), round(green * _OUTLINE_SHADE), round(blue * _OUTLINE_SHADE))
        _options(fill, {
            "color": f"{red},{green},{blue},255", "style": "solid",
            "outline_color": "{},{},{},255".format(*outline), "outline_style": "solid",
            "outline_width": "0.26", "outline_width_unit": "MM", "joinstyle": "bevel",
        })
    return _qml_text(root)


def _options(parent: ET.Element, values: dict[str, str]) -> None:
    """A symbol layer's properties, in the ``<Option type="Map">`` form QGIS writes since 3.x."""
    options = ET.SubElement(parent, "Option", type="Map")
    for name, value in values.items():
        ET.SubElement(options, "Option", name=name, value=value, type="QString")


def _qml_text(root: ET.Element) -> str:
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


def polygon_style_sidecars(path: Path) -> list[Path]:
    """The style file written beside polygons at ``path``: ``NAME.qml``, except for a GeoPackage,
    which holds its style inside (see :func:`write_polygon_style`)."""
    return [] if _is_geopackage(path) else [qgis_style_path(path)]


def write_polygon_style(path: Path, layer: str, card: ModelCard) -> None:
    """Store :func:`polygon_style` as the default style of ``layer`` in the polygons at ``path``:
    in the GeoPackage's ``layer_styles`` table, or as the ``NAME.qml`` sidecar of other formats."""
    style = polygon_style(card)
    if not _is_geopackage(path):
        qgis_style_path(path).write_text(style, encoding="utf-8")
        return
    # The table and its columns are those QGIS creates (through OGR, as here, so the table is
    # registered in gpkg_contents) for Style > Save as Default; QGIS finds a layer's default style
    # by its table name, geometry column and an empty schema.
    columns = {
        "f_table_catalog": "", "f_table_schema": "", "f_table_name": layer,
        "f_geometry_column": read_info(path, layer=layer)["geometry_name"],
        "styleName": layer, "styleQML": style, "styleSLD": "", "useAsDefault": True,
        "description": "segtile: classes in the model card's colours", "owner": "", "ui": "",
    }
    values = [np.array([value], dtype=bool if isinstance(value, bool) else object) for value in columns.values()]
    now = np.array([datetime.now(UTC).replace(tzinfo=None)], dtype="datetime64[ms]")
    ogr_write(str(path), None, [*values, now], [*columns, "update_time"], layer="layer_styles",
              driver="GPKG", layer_options={"FID": "id"})


def _is_geopackage(path: Path) -> bool:
    return path.suffix.lower() == ".gpkg"
