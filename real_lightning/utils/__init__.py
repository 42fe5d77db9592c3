"""Small shared pieces: the collectives, dtype rules, name registries and group (segment) operations."""
