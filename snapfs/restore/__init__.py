"""`snapfs restore`: a pxar archive (or a file or directory in it), an image or a blob to disk.

tree.py restores pxar archives (with filters.py, walker.py, metadata.py), image.py disk images and
blobs; both fill the record of report.py. archive.py picks the right one for an archive name.
"""
