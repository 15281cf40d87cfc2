"""The installed samplerlab version (recorded in fitted files)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("samplerlab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"


def library_version() -> str:
    return __version__
