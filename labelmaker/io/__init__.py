"""Importers (raw captures -> workspace frames) and, later, exporters."""
