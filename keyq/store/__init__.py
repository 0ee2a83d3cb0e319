"""The storage boundary: everything that speaks SQL, and the database file's rules."""
