"""Data sets, their folder layouts, transforms, corruptions and the built-in demo data."""
