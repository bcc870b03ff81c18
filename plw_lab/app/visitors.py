"""What a visitor of the app may name and what they may change.

Paths: a visitor never makes the server read, list or probe one of its files. Every setting that
names a file or folder takes, from a visitor, only the Data tab's upload (for the training data),
built-in sets ('builtin:NAME') and hub ids ('hf:owner/name'; for the model: 'embedded',
'tiny-random' or owner/name). Values the app was started with are the owner's and stay allowed;
`python app.py --allow-local-paths` lifts the rule for a single-user app.

Ownership: a run or sweep belongs to the visitor token that started it, recorded in its folder
(`owner.json`, the token's SHA-256 only), so the rule outlives the job that trained it. Only the
owner may stop, delete or resume it; a folder with no record (a run from the CLI) is read-only.
Nothing here imports gradio.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Collection
from pathlib import Path

from plw_lab.core.config import ConfigError, LabConfig
from plw_lab.core.data import HUB_ID, DataError, check_hub_id
from plw_lab.core.models import EMBEDDED_NAME, TINY_NAME
from plw_lab.core.runs import write_json

#: One message for every model name a visitor may not use, whatever is (or is not) at that path,
#: so the model box never tells a folder from a file from nothing.
MODEL_REFUSED = (
    "model.name: choose 'embedded', 'tiny-random', a listed preset or a Hugging Face model id (owner/name); "
    "this app loads no folder or file of the server"
)
SOURCE_REFUSED = (
    "{key} is neither {upload}a built-in set ('builtin:NAME') nor a hub dataset ('hf:owner/name'); "
    "this app reads no file or folder of the server"
)
OUTPUT_DIR_REFUSED = "train.output_dir is the app's runs folder, set by whoever started the app"

OWNER_FILE = "owner.json"
NOT_FROM_THIS_PAGE = (
    "{name} was not started by a visitor of this page (e.g. from the command line): you can read it here, "
    "not {action} it"
)
ANOTHER_VISITOR = "{name} was started by another visitor; only they can {action} it"


def visitor_model(name: str) -> str:
    """`name` as the app loads it for a visitor: 'embedded' and 'tiny-random' as they are, an owner/name
    hub id (typed with or without 'hf:') as 'hf:owner/name', which loads from the hub or its cache and
    never from a folder of the server; anything else raises `MODEL_REFUSED`. Nothing here looks at the
    disk, so the answer is the same whether a folder of that name exists or not."""
    if name in (EMBEDDED_NAME, TINY_NAME):
        return name
    repo = name.removeprefix("hf:")
    if HUB_ID.fullmatch(repo) and ".." not in repo:
        return f"hf:{repo}"
    raise ConfigError(MODEL_REFUSED)


def check_source(key: str, source: str, upload_allowed: bool = False) -> None:
    """Raise unless a visitor's data source is a built-in set or an owner/name hub dataset."""
    if source.startswith("builtin:"):
        return
    if source.startswith("hf:"):
        try:
            check_hub_id(source.removeprefix("hf:"))
        except DataError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        return
    raise ConfigError(SOURCE_REFUSED.format(key=key, upload="an upload (Data tab), " if upload_allowed else ""))


def refuse_local_paths(cfg: LabConfig, base: LabConfig, uploads: Collection[str] = ()) -> LabConfig:
    """`cfg` with a visitor's model as `visitor_model` names it; a `ConfigError` for any setting that
    names a file or folder of this server and was not in `base` (the app's starting config, the owner's
    choice). `uploads` are the local files the visitor uploaded through the Data tab, the only ones
    `data.source` may name."""
    if cfg.model.name != base.model.name:
        cfg = cfg.override({"model.name": visitor_model(cfg.model.name)})
    if cfg.train.output_dir != base.train.output_dir:
        raise ConfigError(OUTPUT_DIR_REFUSED)
    if cfg.data.source != base.data.source and cfg.data.source not in uploads:
        check_source("data.source", cfg.data.source, upload_allowed=True)
    if cfg.data.val_source and cfg.data.val_source != base.data.val_source:
        check_source("data.val_source", cfg.data.val_source)
    for source in cfg.data.mix:
        if source not in base.data.mix:
            check_source("data.mix", source)
    return cfg


# -- ownership -------------------------------------------------------------------------------------


def visitor_token(token: str | None) -> str:
    """A visitor's token, or a new one for a caller that has none (a first visit, an API client)."""
    return token or uuid.uuid4().hex


def owner_key(visitor: str) -> str:
    """What a folder records of its owner's token: its hash, so reading the folder never gives the token away."""
    return hashlib.sha256(visitor.encode()).hexdigest()


def record_owner(folder: str | Path, visitor: str) -> None:
    write_json(Path(folder) / OWNER_FILE, {"visitor_sha256": owner_key(visitor)})


def recorded_owner(folder: str | Path) -> str | None:
    """The owner key recorded in `folder`, or None (a run from the CLI, or one that predates the record)."""
    try:
        return json.loads((Path(folder) / OWNER_FILE).read_text()).get("visitor_sha256") or None
    except (OSError, ValueError, AttributeError):
        return None


def require_owner(folder: str | Path, visitor: str | None, action: str) -> None:
    """Raise `PermissionError` unless `visitor` started the run or sweep in `folder` (`action`: 'delete', ...)."""
    name = Path(folder).name
    owner = recorded_owner(folder)
    if owner is None:
        raise PermissionError(NOT_FROM_THIS_PAGE.format(name=name, action=action))
    if not visitor or not hmac.compare_digest(owner_key(visitor), owner):
        raise PermissionError(ANOTHER_VISITOR.format(name=name, action=action))
