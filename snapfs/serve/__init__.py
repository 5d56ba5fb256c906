"""`snapfs serve`: the datastore the mount shows, browsed, searched and downloaded over HTTP."""
