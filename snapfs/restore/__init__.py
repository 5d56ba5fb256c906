"""`snapfs restore`: a pxar archive (or a file or directory in it), an image or a blob to disk.

tree.py restores pxar archives (with filters.py, walker.py, metadata.py), image.py disk images and
blobs; both fill the record of report.py. command.py is the CLI glue; `run_restore` is named here
so the command line can import it from the package.
"""

from snapfs.restore.command import run_restore as run_restore
