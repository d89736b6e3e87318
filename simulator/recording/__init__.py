"""Recorded races: the versioned format, reading and writing files, validation."""
