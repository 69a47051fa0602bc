"""UNIT image-to-image translation (Liu, Breuel, Kautz, "Unsupervised Image-to-Image Translation Networks",
NeurIPS 2017), used to give synthetic VehicleX crops the look of real CityFlow crops (docs/method.md).

:func:`train_unit` learns the translation from two unpaired image folders; :func:`translate_folder` writes a
translated copy of a folder (same layout, names and sizes, label files copied).
"""

from vreid.prep.unit.apply import load_translator, translate_folder
from vreid.prep.unit.networks import UnitGenerator, UnitModel
from vreid.prep.unit.train import UnitOptions, train_unit

__all__ = ["UnitGenerator", "UnitModel", "UnitOptions", "load_translator", "train_unit", "translate_folder"]
