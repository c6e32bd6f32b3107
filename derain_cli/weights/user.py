"""The user's own checkpoints (``derain finetune-real`` results) in the user data directory.

Each lives in ``DATA/models/METHOD.TAG/``: ``weights.safetensors``, ``entry.toml`` (its sha256
and how it was made) and ``card.md``. ``DATA`` is ``$DERAIN_DATA_DIR``, else the platformdirs
user data directory (``~/.local/share/derain`` on Linux). Run folders go to ``DATA/runs/``.
Every command that takes ``METHOD.TAG`` finds these after the shipped manifest's entries.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import tomllib
from pathlib import Path

from derain_cli.errors import UsageError, WeightsError
from derain_cli.weights.manifest import WeightsEntry, is_hex, load_manifest, split_name

WEIGHTS_FILE, ENTRY_FILE, CARD_FILE = "weights.safetensors", "entry.toml", "card.md"
_TAG = re.compile(r"[A-Za-z0-9_-]+")


def data_dir() -> Path:
    override = os.environ.get("DERAIN_DATA_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("derain"))


def models_dir() -> Path:
    return data_dir() / "models"


def runs_dir() -> Path:
    return data_dir() / "runs"


def safe_tag(text: str) -> str:
    """A tag made from free text (a folder name): letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_-") or "real"


def _model_name(name: str) -> str:
    """``METHOD.TAG`` checked: a known method and a tag of letters, digits, '_' and '-' only
    (so a name can never reach outside the models folder)."""
    method, tag = split_name(name)
    if not _TAG.fullmatch(tag):
        raise UsageError(f"'{name}': a model tag may hold only letters, digits, '_' and '-'")
    return f"{method}.{tag}"


def _read_entry(folder: Path) -> WeightsEntry:
    """The entry in ``folder``; WeightsError naming the file when it is unusable."""
    method, _, tag = folder.name.partition(".")
    try:
        table = tomllib.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
        sha = str(table["sha256"]).lower()
        if not is_hex(sha, 64):
            raise KeyError("sha256 is not 64 hex digits")
    except (OSError, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"{folder / ENTRY_FILE}: unusable ({err}); `derain models remove {folder.name}` deletes it") from None
    return WeightsEntry(method=method, tag=tag, sha256=sha, license=str(table.get("license", "yours")),
                        trained=str(table.get("trained", "")), path=folder / WEIGHTS_FILE)


def _model_folders() -> list[Path]:
    root = models_dir()
    if not root.is_dir():
        return []
    return [f for f in sorted(root.iterdir()) if not f.name.startswith(".") and f.is_dir() and not f.is_symlink()]


def user_entries() -> dict[str, WeightsEntry]:
    """Every usable user checkpoint by ``method.tag``; broken ones are left out here and
    reported by ``user_entry`` when asked for by name."""
    entries = {}
    for folder in _model_folders():
        try:
            _model_name(folder.name)
            entries[folder.name] = _read_entry(folder)
        except (UsageError, WeightsError):
            continue
    return entries


def user_entry(name: str) -> WeightsEntry | None:
    """The user model ``name``, None if there is none; WeightsError if it is broken."""
    folder = models_dir() / _model_name(name)
    return _read_entry(folder) if folder.is_dir() else None


def install(name: str, weights: Path, sha256: str, trained: str, card: str) -> Path:
    """Copy a trained checkpoint into the data directory as ``name``; an earlier model of that
    name is kept under another name (install_keeping). Returns the new model's folder."""
    return install_keeping(name, weights, sha256, trained, card)[0]


def install_keeping(name: str, weights: Path, sha256: str, trained: str, card: str) -> tuple[Path, str | None]:
    """Copy a trained checkpoint into the data directory as ``name`` (refusing the names of
    shipped checkpoints). An earlier model of that name with other weights is never lost: it
    is renamed METHOD.TAG-YYYYMMDD-HHMMSS (when it was saved), still a model of yours (``-m``,
    ``models list``/``remove``). Returns the new folder and the earlier model's new name (None
    when there was none, or it held these very weights)."""
    from derain_cli.media.images import current_umask

    key = check_installable(name)
    root = models_dir()
    target = root / key
    kept = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; a model folder follows the umask
            shutil.copyfile(weights, staging / WEIGHTS_FILE)
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
            # json strings are valid TOML basic strings (quotes, backslashes, newlines escaped)
            (staging / ENTRY_FILE).write_text(f"sha256 = {json.dumps(sha256)}\nlicense = \"yours\"\n"
                                              f"trained = {json.dumps(trained)}\n", encoding="utf-8")
            retired = root / f".{key}.old"
            if target.exists():
                if _same_weights(target, sha256):  # the same model again: nothing to keep
                    shutil.rmtree(retired, ignore_errors=True)
                    target.rename(retired)  # swap, so that a crash leaves the old model or the new one
                else:
                    kept = _aside_name(target)
                    target.rename(root / kept)
            staging.rename(target)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        raise WeightsError(f"cannot save {key} in {root}: {err}") from None
    return target, kept


def _same_weights(folder: Path, sha256: str) -> bool:
    try:
        return _read_entry(folder).sha256 == sha256.lower()
    except WeightsError:
        return False


def _aside_name(folder: Path) -> str:
    """A free model name for the earlier model in ``folder``: its name and when it was saved."""
    import datetime

    entry = folder / ENTRY_FILE
    saved = (entry if entry.is_file() else folder).stat().st_mtime
    base = f"{folder.name}-{datetime.datetime.fromtimestamp(saved):%Y%m%d-%H%M%S}"
    name, n = base, 1
    shipped = load_manifest()
    while (folder.parent / name).exists() or name in shipped or run_folder(name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def check_installable(name: str) -> str:
    """``name`` as METHOD.TAG if a model of that name may be saved (not a shipped checkpoint)."""
    key = _model_name(name)
    if key in load_manifest():
        raise UsageError(f"{key} is a checkpoint shipped with derain; choose another --tag")
    return key


def remove(name: str) -> list[Path]:
    """Delete the user checkpoint ``name`` and its ``finetune-real`` run folder (checkpoints to
    resume from, synthesised pairs), whichever exist; returns them. Shipped checkpoints cannot
    be removed."""
    key = _model_name(name)
    folders = [f for f in (models_dir() / key, run_folder(key)) if f.is_dir() and not f.is_symlink()]
    if not folders:
        if key in load_manifest():
            raise UsageError(f"{key} is shipped with derain, not one of your models; it cannot be removed")
        mine = ", ".join(user_entries()) or "none"
        raise UsageError(f"no model of yours named {key} in {models_dir()} (yours: {mine})")
    for folder in folders:
        try:
            shutil.rmtree(folder)
        except OSError as err:
            raise WeightsError(f"{folder}: cannot remove it ({err})") from None
    return folders


def run_folder(key: str) -> Path:
    """Where `finetune-real` trains the model it will install as ``key`` (METHOD.TAG)."""
    return runs_dir() / "finetune-real" / key
