"""The one exception hierarchy of snapfs.

Every error a user can meet is a `SnapfsError` whose message is one line naming the thing that is
wrong (a file, a chunk digest, an offset). The CLI prints that line; the FUSE layer maps the class
to an errno in one place. Nothing outside this hierarchy should escape a parser on bad input.
"""

from __future__ import annotations


class SnapfsError(Exception):
    """Base of every error snapfs reports to a user."""


class CorruptDataError(SnapfsError):
    """Stored bytes are not what their format or their checksum says they must be."""


class BadMagicError(CorruptDataError):
    """A file does not start with the magic number of the format it should have."""


class ChecksumMismatchError(CorruptDataError):
    """A CRC, an index checksum or a manifest checksum does not match the data."""


class DigestMismatchError(CorruptDataError):
    """A chunk decodes, but not to the digest it is stored under."""


class TruncatedDataError(CorruptDataError):
    """A file or stream ends before its format says it does."""


class SignatureMismatchError(CorruptDataError):
    """A manifest's HMAC signature does not match its content under the given key."""


class CryptKeyError(SnapfsError):
    """Base of encryption-key problems."""


class KeyRequiredError(CryptKeyError):
    """Encrypted data was met and no key was given."""


class WrongKeyError(CryptKeyError):
    """The key given is not the key the data was encrypted with."""


class WrongPasswordError(WrongKeyError):
    """The password does not unlock the key file."""


class MissingChunkError(SnapfsError):
    """An index refers to a chunk the datastore does not hold."""


class UnsupportedFormatError(SnapfsError):
    """Well-formed input of a kind or version snapfs does not read."""


class NotFoundError(SnapfsError):
    """A snapshot, archive, namespace or path that was asked for does not exist."""


class UsageError(SnapfsError):
    """A command-line argument is malformed (bad snapshot name, bad option value)."""


class RequestError(SnapfsError):
    """The request does not fit the node it names (a path through a file, readlink of a
    directory, an extended attribute the entry lacks): the asker's mistake, not damaged data,
    so it is answered without being logged. The FUSE adapter maps each class to its errno."""


class NotDirectoryError(RequestError):
    """A lookup or listing of a node that is not a directory."""


class IsDirectoryError(RequestError):
    """An open of a directory as a file."""


class NotRegularFileError(RequestError):
    """An open of something that has no content to read (symlink, device, FIFO, socket)."""


class NotSymlinkError(RequestError):
    """A readlink of a node that is not a symbolic link."""
