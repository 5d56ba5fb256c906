"""Metadata indexes: what a walk of an archive found, kept so it is never decoded again."""
