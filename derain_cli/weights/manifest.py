"""The weights manifest: where each ``method.tag`` checkpoint lives and where it came from.

``weights.toml`` sits at the top of the repository and is installed inside the package.
Architecture settings live in code; the manifest says only where a file is (bundled in the
package, a Hugging Face Hub repo + filename + pinned revision, or a file of the authors' own
GitHub repository at a pinned commit), its sha256, licence and how it was trained. One table
per checkpoint::

    [lpnet.rain100l]
    file = "lpnet_rain100l.safetensors"     # bundled: derain_cli/weights/files/
    sha256 = "..."
    license = "MIT"
    trained = "Rain100L train, 200 pairs; see docs/weights/lpnet.rain100l.md"

    [lpnet.rain100h]
    hub = { repo = "owner/name", filename = "lpnet_rain100h.safetensors", revision = "<commit sha>" }
    sha256 = "..."

    [prenet.authors-rain100h]                # the authors' release, fetched from them on first use
    github = { repo = "csdwren/PReNet", path = "logs/Rain100H/PReNet6/net_latest.pth", revision = "<40-hex commit>" }
    sha256 = "..."
    license = "none published"
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

# Tags of checkpoints released by a method's authors (``prenet.authors-rain100h``): downloaded
# from the authors, never bundled; `benchmark --published` runs them beside derain's own.
AUTHORS_PREFIX = "authors-"
NO_LICENCE = "none published"  # the licence field of files whose authors published none


@dataclass(frozen=True)
class HubLocation:
    repo: str
    filename: str
    revision: str


@dataclass(frozen=True)
class GitHubLocation:
    repo: str
    path: str
    revision: str  # a full 40-hex commit: the file can never change under its sha256


@dataclass(frozen=True)
class WeightsEntry:
    method: str
    tag: str
    sha256: str
    license: str
    trained: str
    file: str | None = None
    hub: HubLocation | None = None
    github: GitHubLocation | None = None
    path: Path | None = None  # a user's own checkpoint in the data directory (weights/user.py)

    @property
    def name(self) -> str:
        return f"{self.method}.{self.tag}"

    @property
    def filename(self) -> str:
        if self.path is not None:
            return self.path.name
        if self.github is not None:
            return Path(self.github.path).name
        return self.file if self.file else self.hub.filename

    @property
    def by_authors(self) -> bool:
        return self.tag.startswith(AUTHORS_PREFIX)

    @property
    def unlicensed(self) -> bool:
        return self.license == NO_LICENCE

    @property
    def origin(self) -> str:
        """Where the file comes from, short: package, yours, hf://repo@rev, github:repo@rev."""
        if self.path is not None:
            return "yours"
        if self.file:
            return "package"
        if self.github is not None:
            return f"github:{self.github.repo}@{self.github.revision[:12]}"
        return f"hf://{self.hub.repo}@{self.hub.revision[:12]}"


def licence_notice(entries: list[WeightsEntry]) -> str:
    """The one line said wherever unlicensed checkpoints are listed or first downloaded."""
    names = ", ".join(e.name for e in entries)
    origins = ", ".join(dict.fromkeys(e.origin for e in entries))
    return (f"{names}: the authors published no licence for these weights; derain downloads them "
            f"from the authors' own repository ({origins}) on first use and never bundles or re-hosts them")


def manifest_path() -> Path:
    """The installed copy inside the package, else the repository's top-level file."""
    for candidate in (PACKAGE_DIR / "weights.toml", PACKAGE_DIR.parent / "weights.toml"):
        if candidate.is_file():
            return candidate
    raise WeightsError("weights.toml not found: the installation is incomplete; reinstall derain")


def _entry(method: str, tag: str, table: dict, source: Path) -> WeightsEntry:
    where = f"{source}: [{method}.{tag}]"
    sha = str(table.get("sha256", "")).lower()
    if not is_hex(sha, 64):
        raise WeightsError(f"{where} needs a 64-hex-digit sha256")
    if sum(key in table for key in ("file", "hub", "github")) != 1:
        raise WeightsError(f"{where} must give exactly one of 'file' (bundled), 'hub' or 'github'")
    hub = _location(table.get("hub"), HubLocation, "hub", where)
    github = _location(table.get("github"), GitHubLocation, "github", where)
    if github is not None and not is_hex(github.revision, 40):
        raise WeightsError(f"{where} github revision must be a full 40-hex-digit commit")
    return WeightsEntry(
        method=method,
        tag=tag,
        sha256=sha,
        license=str(table.get("license", "unknown")),
        trained=str(table.get("trained", "")),
        file=table.get("file"),
        hub=hub,
        github=github,
    )


def _location(table: dict | None, kind: type, key: str, where: str):
    """A ``hub`` or ``github`` table as its dataclass (None when absent); every field is required."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise WeightsError(f"{where} {key} must be a table {{ ... }}")
    fields = list(kind.__dataclass_fields__)
    missing = set(fields) - set(table)
    if missing:
        raise WeightsError(f"{where} {key} table lacks {', '.join(sorted(missing))}")
    return kind(*(str(table[f]) for f in fields))


def is_hex(text: str, length: int) -> bool:
    """``text`` is ``length`` lower-case hex digits (a sha256, a git commit)."""
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


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
