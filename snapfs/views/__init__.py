"""Views over the datastore model: what the CLI, the mount and restore show of it."""
