"""The project folder: `active.toml`, the database, artifacts/ and exports/ (DESIGN.md)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import Engine

from active.atomic import write_atomic
from active.backbones import DEFAULT_BACKBONE, default_weights
from active.errors import UserError

CONFIG_NAME = "active.toml"
DEFAULT_DB = "sqlite:///active.db"  # relative paths are resolved against the project folder
DEFAULT_WEIGHTS = default_weights(DEFAULT_BACKBONE)

PRESETS: dict[str, list[str]] = {
    # The classes of ../shared/datasets/clothing-small (folder names).
    "clothing10": ["dress", "hat", "longsleeve", "outwear", "pants", "shirt", "shoes", "shorts", "skirt", "t-shirt"],
    "deepfashion2": [
        "short sleeve top", "long sleeve top", "short sleeve outwear", "long sleeve outwear", "vest",
        "sling", "shorts", "trousers", "skirt", "short sleeve dress", "long sleeve dress", "vest dress",
        "sling dress",
    ],
    "deepfashion": [
        "Blazer", "Blouse", "Cardigan", "Dress", "Jacket", "Jeans", "Jumpsuit", "Romper", "Shorts",
        "Skirt", "Sweater", "Sweatpants", "Tank", "Tee", "Top",
    ],
}


@dataclass
class RetrainPolicy:
    head_every: int = 50  # a background head refresh after this many new human labels; 0 = never
    full_epochs: int = 5
    holdout_fraction_for_calibration: float = 0.1


@dataclass
class LabelingPolicy:
    overlap: int = 1  # annotators per item (>1 = agreement sampling)
    lease_minutes: int = 10


@dataclass
class Config:
    classes: list[str] = field(default_factory=list)
    backbone: str = DEFAULT_BACKBONE
    weights: str = DEFAULT_WEIGHTS
    image_size: int = 224
    db: str = DEFAULT_DB
    retrain: RetrainPolicy = field(default_factory=RetrainPolicy)
    labeling: LabelingPolicy = field(default_factory=LabelingPolicy)

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        proj = dict(data.get("project", {}))
        known = {"classes", "backbone", "weights", "image_size", "db"}
        unknown = set(proj) - known
        if unknown:
            raise UserError(f"{CONFIG_NAME}: unknown keys in [project]: {', '.join(sorted(unknown))}")
        try:
            return cls(
                **proj,
                retrain=RetrainPolicy(**data.get("retrain", {})),
                labeling=LabelingPolicy(**data.get("labeling", {})),
            )
        except TypeError as exc:
            raise UserError(f"{CONFIG_NAME}: {exc}") from None

    def to_toml(self) -> str:
        def val(v: object) -> str:
            return json.dumps(v, ensure_ascii=False)  # JSON strings, numbers and lists are TOML too

        lines = ["# active-labeler project settings", "[project]"]
        d = asdict(self)
        for key in ("classes", "backbone", "weights", "image_size", "db"):
            lines.append(f"{key} = {val(d[key])}")
        for section in ("retrain", "labeling"):
            lines += ["", f"[{section}]"] + [f"{k} = {val(v)}" for k, v in d[section].items()]
        return "\n".join(lines) + "\n"


def validate_class_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise UserError("class names cannot be empty")
    if len(name) > 256 or any(ord(c) < 32 for c in name):
        raise UserError(f"class name {name!r} is too long or holds control characters")
    return name


def parse_classes(text: str) -> list[str]:
    classes = [validate_class_name(c) for c in text.split(",") if c.strip()]
    dupes = {c for c in classes if classes.count(c) > 1}
    if dupes:
        raise UserError(f"duplicate class names: {', '.join(sorted(dupes))}")
    return classes


class Project:
    """A project folder. Cheap to construct; the engine is made on first use."""

    def __init__(self, root: Path | str, config: Config) -> None:
        self.root = Path(root).resolve()
        self.config = config

    @classmethod
    def load(cls, root: Path | str) -> Project:
        root = Path(root)
        path = root / CONFIG_NAME
        if not path.is_file():
            raise UserError(f"{root}: no {CONFIG_NAME} here; run `active init {root}` first or pass --project DIR")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc})") from None
        return cls(root, Config.from_dict(data))

    def save(self) -> None:
        """Write active.toml atomically (a crash never leaves half a file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / CONFIG_NAME, self.config.to_toml())

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def db_url(self) -> str:
        return resolve_db_url(self.config.db, self.root)

    @cached_property
    def engine(self) -> Engine:
        from storage.db import StoreError, open_engine

        try:
            return open_engine(self.db_url)
        except StoreError as exc:
            raise UserError(str(exc)) from None

    def add_classes(self, names: list[str]) -> list[str]:
        """Append new classes (existing labels are untouched); returns those actually added."""
        added = [n for n in names if n not in self.config.classes]
        if added:
            self.config.classes = [*self.config.classes, *added]
            self.save()
        return added

    def check_class(self, name: str) -> str:
        if name not in self.config.classes:
            raise UserError(f"class {name!r} is not in the taxonomy ({', '.join(self.config.classes)})")
        return name


def resolve_db_url(url: str, root: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url
