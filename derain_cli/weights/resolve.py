"""Finding a checkpoint file: explicit path or hf:// URL, bundled file, cache, download.

Every manifest file is sha256-checked before use, wherever it came from; a mismatch is
refused. Offline mode (``--offline`` or ``HF_HUB_OFFLINE=1``) never touches the network and
says which file is missing and where to put it. The cache is the platformdirs user cache
(``DERAIN_CACHE_DIR`` overrides); the Hub endpoint follows ``HF_ENDPOINT``, and files of the
authors' GitHub repositories come from ``DERAIN_GITHUB_ENDPOINT`` (default
https://raw.githubusercontent.com, as ``{endpoint}/{owner}/{repo}/{commit}/{path}``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from derain_cli.errors import UsageError, WeightsError
from derain_cli.weights.manifest import BUNDLED_DIR, WeightsEntry, licence_notice, load_manifest, split_name

_TRUE = {"1", "true", "yes", "on"}
GITHUB_ENDPOINT = "https://raw.githubusercontent.com"
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ResolvedWeights:
    """A checkpoint file ready to load; ``entry`` is None for files the user pointed at."""

    method: str
    label: str
    path: Path
    source: str  # bundled | cache | downloaded | file | hf | yours
    entry: WeightsEntry | None = None


def cache_dir() -> Path:
    override = os.environ.get("DERAIN_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("derain"))


def is_offline(flag: bool | None = None) -> bool:
    if flag:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(entry: WeightsEntry, path: Path) -> None:
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise WeightsError(
            f"{path}: sha256 {actual} does not match {entry.name}'s {entry.sha256}; refusing to load it "
            f"(delete the file and run `derain models download {entry.name}`)"
        )


def cached_path(entry: WeightsEntry) -> Path:
    return cache_dir() / "weights" / entry.name / entry.filename


def local_path(entry: WeightsEntry) -> Path:
    """Where the entry's file is, or would be once downloaded."""
    if entry.path is not None:
        return entry.path
    return BUNDLED_DIR / entry.file if entry.file else cached_path(entry)


def available_entries() -> dict[str, WeightsEntry]:
    """The shipped manifest's entries, then the user's own models (weights/user.py)."""
    from derain_cli.weights.user import user_entries

    return {**user_entries(), **load_manifest()}


def locate(entry: WeightsEntry, offline: bool | None = None) -> ResolvedWeights:
    """The verified local file of a manifest entry, downloading it if allowed."""
    path = local_path(entry)
    if entry.path is not None:
        if not path.is_file():
            raise WeightsError(f"{entry.name}: {path} is missing; `derain models remove {entry.name}` forgets it")
        verify(entry, path)
        return ResolvedWeights(entry.method, entry.name, path, "yours", entry)
    if entry.file:
        if not path.is_file():
            raise WeightsError(f"{entry.name}: bundled file {path} is missing; reinstall derain")
        verify(entry, path)
        return ResolvedWeights(entry.method, entry.name, path, "bundled", entry)
    if path.is_file():
        verify(entry, path)
        return ResolvedWeights(entry.method, entry.name, path, "cache", entry)
    if is_offline(offline):
        raise WeightsError(
            f"{entry.name}: {entry.filename} is not in the cache and offline mode is on; "
            f"copy it (sha256 {entry.sha256}, from {remote_source(entry)}) to {path}"
        )
    if entry.github is not None:
        if entry.unlicensed:
            announce(licence_notice([entry]))
        _fetch_url(github_url(entry), path, entry.sha256, entry.name)
    else:
        hub = entry.hub
        _download(hub.repo, hub.filename, hub.revision, path, expected_sha256=entry.sha256)
    return ResolvedWeights(entry.method, entry.name, path, "downloaded", entry)


def announce(line: str) -> None:
    """A line for the user while a checkpoint downloads (stderr; never stdout, which is data)."""
    print(line, file=sys.stderr, flush=True)


def github_url(entry: WeightsEntry) -> str:
    """The raw-file URL of an entry's file in its GitHub repository at its pinned commit."""
    endpoint = (os.environ.get("DERAIN_GITHUB_ENDPOINT") or GITHUB_ENDPOINT).rstrip("/")
    return f"{endpoint}/{entry.github.repo}/{entry.github.revision}/{entry.github.path}"


def remote_source(entry: WeightsEntry) -> str:
    if entry.github is not None:
        return github_url(entry)
    return f"Hugging Face repo {entry.hub.repo} at revision {entry.hub.revision}"


def _check_download(path: Path, expected_sha256: str | None, what: str) -> None:
    if expected_sha256 is None:
        return
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise WeightsError(f"{what} has sha256 {actual}, expected {expected_sha256}; refused")


def _fetch_url(url: str, dest: Path, expected_sha256: str, label: str) -> None:
    """Download ``url`` into ``dest`` atomically, after checking its sha256."""
    announce(f"{label}: downloading {url}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        part = Path(tmp) / dest.name
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts
            raise WeightsError(f"could not download {label} from {url}: {_reason(err)}") from None
        _check_download(part, expected_sha256, f"downloaded {url}")
        shutil.move(part, dest)


def _reason(err: Exception) -> str:
    """One line: "HTTP 404 Not Found", "[Errno 111] Connection refused", ..."""
    if isinstance(err, urllib.error.HTTPError):
        text = f"HTTP {err.code} {err.reason}"
    elif isinstance(err, urllib.error.URLError):
        text = str(err.reason)
    else:
        text = f"{type(err).__name__}: {err}"
    return " ".join(text.split())


def _download(repo: str, filename: str, revision: str, dest: Path, expected_sha256: str | None) -> None:
    """Download one Hub file into ``dest`` atomically, after checking its sha256."""
    from huggingface_hub import hf_hub_download

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        try:
            fetched = hf_hub_download(
                repo_id=repo,
                filename=filename,
                revision=revision,
                local_dir=tmp,
                endpoint=os.environ.get("HF_ENDPOINT") or None,
            )
        except Exception as err:  # network, HTTP and Hub errors all mean: weights unavailable
            raise WeightsError(f"could not download {filename} from {repo}@{revision}: {type(err).__name__}: {err}") from None
        _check_download(Path(fetched), expected_sha256, f"downloaded {repo}/{filename}@{revision}")
        shutil.move(fetched, dest)


def parse_hf_url(url: str) -> tuple[str, str, str]:
    """``hf://owner/repo/path/file.safetensors@revision`` -> (repo, filename, revision)."""
    body, at, revision = url.removeprefix("hf://").rpartition("@")
    if not at:
        body, revision = url.removeprefix("hf://"), "main"
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise UsageError(f"'{url}' is not of the form hf://owner/repo/file.safetensors@revision")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision


def resolve(method: str, weights: str | None = None, offline: bool | None = None) -> ResolvedWeights:
    """Resolve ``method`` (``lpnet`` or ``lpnet.rain100h``) and an optional ``--weights``.

    Order: explicit ``weights`` (a path or hf:// URL), then the manifest entry's bundled
    file, the cache, and a Hub download.
    """
    name, tag = split_name(method)
    if weights:
        if weights.startswith("hf://"):
            repo, filename, revision = parse_hf_url(weights)
            path = cache_dir() / "hub" / repo / revision / filename
            if not path.is_file():
                if is_offline(offline):
                    raise WeightsError(f"{weights}: not in the cache and offline mode is on; copy the file to {path}")
                _download(repo, filename, revision, path, expected_sha256=None)
            return ResolvedWeights(name, weights, path, "hf")
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"{path}: checkpoint file not found")
        return ResolvedWeights(name, str(path), path, "file")
    entries = available_entries()
    entry = entries.get(f"{name}.{tag}")
    if entry is None:
        from derain_cli.weights.user import user_entry

        entry = user_entry(f"{name}.{tag}")  # a broken model of yours is named, not "unknown"
    if entry is None:
        available = ", ".join(sorted(k for k in entries if k.startswith(name + "."))) or "none yet"
        message = (f"no checkpoint '{name}.{tag}' in weights.toml (available for {name}: {available}); "
                   f"pass one with --weights PATH or hf://owner/repo/file@revision")
        if "." in method:  # a name the user spelled out: a usage error, like an unknown method
            raise undeclared(f"{name}.{tag}", message, UsageError)
        raise WeightsError(message)  # the method's default checkpoint is not available
    return locate(entry, offline)


def undeclared(key: str, message: str, error: type[Exception] = UsageError) -> Exception:
    """The error for a checkpoint name no manifest entry or model of yours declares: ``message``,
    or for a training aid this release names but does not declare (``vgg19.imagenet``), what to
    pass instead."""
    from derain_cli.weights.manifest import AUXILIARY

    method, _, tag = key.partition(".")
    if AUXILIARY.get(method) == tag:
        return UsageError(f"{key} is not declared in this release's weights.toml (its sha256 and Hub revision "
                          f"are not pinned yet, docs/weights.md), so it cannot be downloaded: pass a VGG19 "
                          f"ImageNet state dict with `derain train --vgg FILE`, or train with --no-semantic")
    return error(message)
