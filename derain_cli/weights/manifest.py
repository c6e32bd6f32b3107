"""The weights manifest: where each ``method.tag`` checkpoint lives and where it came from.

``weights.toml`` sits at the top of the repository and is installed inside the package.
Architecture settings live in code; the manifest says only where a file is (bundled in the
package, or a Hugging Face Hub repo + filename + pinned revision), its sha256, licence and
how it was trained. One table per checkpoint::

    [lpnet.rain100l]
    file = "lpnet_rain100l.safetensors"     # bundled: derain_cli/weights/files/
    sha256 = "..."
    license = "MIT"
    trained = "Rain100L train, 200 pairs; see docs/weights/lpnet.rain100l.md"

    [lpnet.rain100h]
    hub = { repo = "owner/name", filename = "lpnet_rain100h.safetensors", revision = "<commit sha>" }
    sha256 = "..."
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from derain_cli.errors import UsageError, WeightsError
from derain_cli.methods import get_method

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BUNDLED_DIR = PACKAGE_DIR / "weights" / "files"

# Weights that training needs but no method builds (VGG19 for LIR's semantic loss), by name
# and default tag: their entries resolve, download and verify like any checkpoint.
AUXILIARY = {"vgg19": "imagenet"}


@dataclass(frozen=True)
class HubLocation:
    repo: str
    filename: str
    revision: str


@dataclass(frozen=True)
class WeightsEntry:
    method: str
    tag: str
    sha256: str
    license: str
    trained: str
    file: str | None = None
    hub: HubLocation | None = None
    path: Path | None = None  # a user's own checkpoint in the data directory (weights/user.py)

    @property
    def name(self) -> str:
        return f"{self.method}.{self.tag}"

    @property
    def filename(self) -> str:
        if self.path is not None:
            return self.path.name
        return self.file if self.file else self.hub.filename


def manifest_path() -> Path:
    """The installed copy inside the package, else the repository's top-level file."""
    for candidate in (PACKAGE_DIR / "weights.toml", PACKAGE_DIR.parent / "weights.toml"):
        if candidate.is_file():
            return candidate
    raise WeightsError("weights.toml not found: the installation is incomplete; reinstall derain")


def _entry(method: str, tag: str, table: dict, source: Path) -> WeightsEntry:
    where = f"{source}: [{method}.{tag}]"
    sha = str(table.get("sha256", "")).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise WeightsError(f"{where} needs a 64-hex-digit sha256")
    hub = table.get("hub")
    if ("file" in table) == (hub is not None):
        raise WeightsError(f"{where} must give exactly one of 'file' (bundled) or 'hub'")
    if hub is not None:
        missing = {"repo", "filename", "revision"} - set(hub)
        if missing:
            raise WeightsError(f"{where} hub table lacks {', '.join(sorted(missing))}")
        hub = HubLocation(hub["repo"], hub["filename"], hub["revision"])
    return WeightsEntry(
        method=method,
        tag=tag,
        sha256=sha,
        license=str(table.get("license", "unknown")),
        trained=str(table.get("trained", "")),
        file=table.get("file"),
        hub=hub,
    )


def load_manifest(path: Path | None = None) -> dict[str, WeightsEntry]:
    """All entries by ``method.tag``. Raises WeightsError for a malformed manifest."""
    path = path or manifest_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"{path}: cannot read the weights manifest ({err})") from None
    entries = {}
    for method, tags in data.items():
        if method not in AUXILIARY:
            get_method(method)  # an entry for an unknown method is a packaging bug: fail loudly
        for tag, table in tags.items():
            entry = _entry(method, tag, table, path)
            entries[entry.name] = entry
    return entries


def split_name(name: str) -> tuple[str, str]:
    """``lpnet`` -> (``lpnet``, its default tag); ``lpnet.rain100h`` -> (``lpnet``, ``rain100h``)."""
    method, _, tag = name.partition(".")
    if method in AUXILIARY:
        return method, tag or AUXILIARY[method]
    spec = get_method(method)
    if _ and not tag:
        raise UsageError(f"'{name}' has an empty tag; write {method} or {method}.TAG")
    return spec.name, tag or spec.default_tag
