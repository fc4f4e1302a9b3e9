"""The SQLite layout of a store's ``meta.sqlite`` (see :mod:`landmark.index.store`)."""

STORE_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    row INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    path TEXT,
    landmark_id INTEGER,
    split TEXT,
    width INTEGER,
    height INTEGER,
    added_at REAL NOT NULL,
    content TEXT
);
CREATE INDEX IF NOT EXISTS images_landmark ON images(landmark_id);
CREATE INDEX IF NOT EXISTS images_split ON images(split);
CREATE TABLE IF NOT EXISTS landmarks (landmark_id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS extras (row INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
                                   PRIMARY KEY (row, name));
"""
# extras: small per-photo arrays (float16) computed with the descriptor, e.g. the object prior's class-group
# probabilities; removed with their photo.
# The augmented vectors (DBA, landmark.index.augmented): which photos have one and where it is (part 0: in
# their index, n > 0: in the part file n awaiting it), and the voted landmark of unlabelled photos; removed
# with their photo, like extras.
AUGMENTED_SCHEMA = """
CREATE TABLE IF NOT EXISTS augmented (row INTEGER PRIMARY KEY, part INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS augmented_part ON augmented(part);
CREATE TABLE IF NOT EXISTS votes (row INTEGER PRIMARY KEY, label INTEGER NOT NULL);
"""
