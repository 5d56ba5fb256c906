"""Search, diff and file history across every snapshot of a datastore."""
