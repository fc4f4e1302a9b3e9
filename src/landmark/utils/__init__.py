"""Small shared helpers: atomic writes, device selection, progress bars."""
