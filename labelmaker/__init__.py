"""labelmaker: automatic dense 3D semantic labels for indoor RGB-D scans."""

__version__ = "0.1.0"
