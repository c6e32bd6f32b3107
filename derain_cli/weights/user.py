"""The user's own checkpoints (``derain finetune-real`` results) in the user data directory.

Each lives in ``DATA/models/METHOD.TAG/``: ``weights.safetensors``, ``entry.toml`` (its sha256
and how it was made) and ``card.md``. ``DATA`` is ``$DERAIN_DATA_DIR``, else the platformdirs
user data directory (``~/.local/share/derain`` on Linux). Run folders go to ``DATA/runs/``.
Every command that takes ``METHOD.TAG`` finds these after the shipped manifest's entries.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from pathlib import Path

from derain_cli.errors import UsageError, WeightsError
from derain_cli.weights.manifest import WeightsEntry, load_manifest, split_name

WEIGHTS_FILE, ENTRY_FILE, CARD_FILE = "weights.safetensors", "entry.toml", "card.md"


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


def _read_entry(folder: Path) -> WeightsEntry:
    method, _, tag = folder.name.partition(".")
    try:
        table = tomllib.loads((folder / ENTRY_FILE).read_text(encoding="utf-8"))
        sha = str(table["sha256"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise WeightsError(f"{folder / ENTRY_FILE}: unreadable ({err}); `derain models remove {folder.name}` deletes it") from None
    return WeightsEntry(method=method, tag=tag, sha256=sha, license=str(table.get("license", "yours")),
                        trained=str(table.get("trained", "")), path=folder / WEIGHTS_FILE)


def user_entries() -> dict[str, WeightsEntry]:
    """Every user checkpoint by ``method.tag``."""
    root = models_dir()
    if not root.is_dir():
        return {}
    return {f.name: _read_entry(f) for f in sorted(root.iterdir()) if (f / ENTRY_FILE).is_file()}


def install(name: str, weights: Path, sha256: str, trained: str, card: str) -> Path:
    """Copy a trained checkpoint into the data directory as ``name`` (replacing an earlier one
    of that name); refuses the names of shipped checkpoints. Returns its folder."""
    method, tag = split_name(name)
    key = f"{method}.{tag}"
    if key in load_manifest():
        raise UsageError(f"{key} is a checkpoint shipped with derain; choose another --tag")
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        shutil.copyfile(weights, staging / WEIGHTS_FILE)
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        trained = trained.replace("\\", "\\\\").replace('"', '\\"')
        (staging / ENTRY_FILE).write_text(f'sha256 = "{sha256}"\nlicense = "yours"\ntrained = "{trained}"\n', encoding="utf-8")
        target = root / key
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def remove(name: str) -> Path:
    """Delete the user checkpoint ``name``; shipped checkpoints cannot be removed."""
    method, tag = split_name(name)
    key = f"{method}.{tag}"
    folder = models_dir() / key
    if not folder.is_dir():
        if key in load_manifest():
            raise UsageError(f"{key} is shipped with derain, not one of your models; it cannot be removed")
        mine = ", ".join(user_entries()) or "none"
        raise UsageError(f"no model of yours named {key} in {models_dir()} (yours: {mine})")
    shutil.rmtree(folder)
    return folder
