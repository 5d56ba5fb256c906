"""Linux interfaces more than one package reads (mountinfo)."""
