"""A run folder: its names (names.py), what a run writes (writer.py), how it is read (reader.py)."""
