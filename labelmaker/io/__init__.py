"""Importers (raw captures -> workspace frames), downloads, ground truth and exports.

Importers register themselves in `registry.IMPORTERS`; this package imports them (the registry does not).
"""
from . import arkitscenes, posed_rgbd, scanner3d  # noqa: F401  (register their importers)
