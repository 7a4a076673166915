"""Camera geometry for the retail analytics: named lines and zones per store and camera (typed config).

A store camera sees a door, a queue, a shelf. The analytics (`jobs.retail_analytics`) count people crossing
the door *line* in and out and measure how long they stay in the queue or shelf *zone*; this module says
where those are, per camera, and checks them before any model work (bad geometry: `ConfigError`, exit 2).

    geometry:
      cameras:
        - store: "17"                 # matched against the clip layout's {store} and {camera}
          camera: "3"
          units: normalized           # 0..1 of the display frame (default), or pixels of the display frame
          lines:
            - name: entrance
              start: [0.10, 0.80]
              end: [0.90, 0.80]
              in_side: left           # side a person is on after walking in, seen from start looking at end
          zones:
            - name: checkout_queue
              polygon: [[0.1, 0.1], [0.4, 0.1], [0.4, 0.5], [0.1, 0.5]]

Coordinates are those of the `tracks` table: display pixels (`x_px`, `y_px`, after rotation metadata)
or their 0..1 fractions (`x_norm`, `y_norm`), x to the right, y *down*. "Left" of a line is the left hand
of someone standing on the picture at `start` and facing `end`: for a line drawn left to right, the upper
part of the picture. This is supervision's `LineZone` convention: a crossing to the left side is "in".

The same document is read from the retail job's YAML section (`retail: {geometry: {...}}`), from a
separate YAML/JSON file (`--geometry FILE`, or `retail: {geometry: FILE}`), and by `pipeline render
--geometry FILE`, which draws it. Pure: pydantic and shapely only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from shapely.geometry import Polygon
from shapely.validation import explain_validity

from pipeline.config import ConfigError

Units = Literal["normalized", "pixels"]
Point2 = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _as_name(value: Any) -> Any:
    # YAML reads `store: 17` as an int; the clip layout's keys are strings.
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class LineSpec(_Strict):
    """A line people cross: a door, a passage; counted in and out."""

    name: str = Field(min_length=1, description="The line's name, unique within its camera (e.g. entrance).")
    start: Point2 = Field(description="One end of the line, [x, y] in the camera's units.")
    end: Point2 = Field(description="The other end, [x, y]; a crossing counts only between the two ends.")
    in_side: Literal["left", "right"] = Field(
        "left",
        description=(
            "Which side is inside: 'left' or 'right' as seen standing at `start` facing `end` on the picture "
            "(y down); moving to this side is 'in', away from it 'out' (left: supervision's LineZone default)."
        ),
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return _as_name(value)

    @model_validator(mode="after")
    def _two_points(self) -> LineSpec:
        if not all(math.isfinite(v) for v in (*self.start, *self.end)):
            raise ValueError(f"line {self.name!r}: coordinates must be finite numbers")
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point; a line needs two distinct points")
        return self


class ZoneSpec(_Strict):
    """An area people stay in: a queue, a shelf, a fitting room; visits and dwell are measured."""

    name: str = Field(min_length=1, description="The zone's name, unique within its camera (e.g. checkout_queue).")
    polygon: list[Point2] = Field(
        min_length=3,
        description="The zone's outline: at least 3 [x, y] corners in order (not closed: the last joins the first).",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return _as_name(value)

    @model_validator(mode="after")
    def _simple_polygon(self) -> ZoneSpec:
        if not all(math.isfinite(v) for p in self.polygon for v in p):
            raise ValueError(f"zone {self.name!r}: coordinates must be finite numbers")
        shape = Polygon(self.polygon)
        if shape.area <= 0:
            raise ValueError(f"zone {self.name!r}: the outline has no area (its corners lie on one line)")
        if not shape.is_valid:
            raise ValueError(f"zone {self.name!r}: the outline is not a simple polygon ({explain_validity(shape)}); "
                             "list the corners in order around the zone, without crossing edges")
        return self


class CameraGeometry(_Strict):
    """The lines and zones of one store camera."""

    store: str = Field(min_length=1, description="The store, as the clip layout's {store} captures it.")
    camera: str = Field(min_length=1, description="The camera, as the clip layout's {camera} captures it.")
    units: Units = Field(
        "normalized",
        description="'normalized': x and y are 0..1 of the display frame (any resolution); 'pixels': display pixels.",
    )
    lines: list[LineSpec] = Field(default_factory=list, description="Lines counted in and out.")
    zones: list[ZoneSpec] = Field(default_factory=list, description="Zones whose visits, dwell and occupancy are measured.")

    @field_validator("store", "camera", mode="before")
    @classmethod
    def _key(cls, value: Any) -> Any:
        return _as_name(value)

    @model_validator(mode="after")
    def _names_and_range(self) -> CameraGeometry:
        names = [x.name for x in self.lines] + [z.name for z in self.zones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names used twice: {dupes}; every line and zone of a camera needs its own name")
        coords = [v for x in self.lines for v in (*x.start, *x.end)] + [v for z in self.zones for p in z.polygon for v in p]
        if self.units == "normalized" and any(v < 0 or v > 1 for v in coords):
            raise ValueError("coordinates outside 0..1 with units: normalized; use fractions of the frame, "
                             "or set units: pixels for display pixels")
        if self.units == "pixels" and any(v < 0 for v in coords):
            raise ValueError("negative pixel coordinates: pixels count from the top-left corner of the display frame")
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.store, self.camera)


class RetailGeometry(_Strict):
    """Every camera's geometry; a camera not listed still gets counts and in-view occupancy."""

    cameras: list[CameraGeometry] = Field(default_factory=list, description="One entry per store camera.")

    @model_validator(mode="after")
    def _one_entry_per_camera(self) -> RetailGeometry:
        keys = [c.key for c in self.cameras]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            listed = ", ".join(f"store={s}/camera={c}" for s, c in dupes)
            raise ValueError(f"cameras listed twice: {listed}; merge their lines and zones into one entry")
        return self

    def for_camera(self, store: str, camera: str) -> CameraGeometry | None:
        """The geometry of this store camera, or None when it has none."""
        return next((c for c in self.cameras if c.key == (store, camera)), None)


def _one_line(exc: ValidationError, where: str) -> str:
    """The first validation error as one line (`where.cameras[0].lines[1]: message`), and how many more."""
    errors = exc.errors()
    first = errors[0]
    path = where
    for part in first["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown setting (check the spelling)"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {msg}{more}".replace("\n", " ")


def parse_geometry(data: Any, *, where: str = "retail.geometry") -> RetailGeometry:
    """Validate geometry given as plain data (a mapping with `cameras`); ConfigError in one line if bad."""
    if data is None:
        return RetailGeometry()
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with `cameras:` (or a file name), got {type(data).__name__}")
    try:
        return RetailGeometry.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, where)) from None


def load_geometry(source: Any) -> RetailGeometry:
    """Geometry from the job's `geometry` option: None (none), inline data, or a YAML/JSON file's path.

    Raises:
        ConfigError: the file is missing or unreadable, or the geometry is invalid (one line, says where).
    """
    if source is None or source == "":
        return RetailGeometry()
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"retail.geometry: file {path} does not exist (pass a YAML or JSON file with `cameras:`)")
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"retail.geometry: cannot read {path}: {type(exc).__name__}: {exc}".replace("\n", " ")) from None
        return parse_geometry(data, where=str(path))
    return parse_geometry(source)
