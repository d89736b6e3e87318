"""Importers: race articles and official timing exports become recordings."""
