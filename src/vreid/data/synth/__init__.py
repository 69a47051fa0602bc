"""The built-in synthetic vehicle city: a VehicleX-like ReID dataset drawn with numpy + PIL, no downloads.

It lets the toolkit run end to end on a fresh machine. See ``vehicles`` for the orientation convention.
"""

from vreid.data.synth.city import generate_city
from vreid.data.synth.options import SynthOptions
from vreid.data.synth.preview import write_contact_sheet
from vreid.data.synth.vehicles import (
    COLOR_NAMES,
    TYPE_NAMES,
    VEHICLEX_COLORS,
    VEHICLEX_TYPES,
    ProjectedFace,
    VehicleIdentity,
    identity_attributes,
    project_vehicle,
)

__all__ = [
    "COLOR_NAMES",
    "TYPE_NAMES",
    "VEHICLEX_COLORS",
    "VEHICLEX_TYPES",
    "ProjectedFace",
    "SynthOptions",
    "VehicleIdentity",
    "generate_city",
    "identity_attributes",
    "project_vehicle",
    "write_contact_sheet",
]
