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
from storage.fields import DEFAULT_FIELD, check_field_name

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
    # A catalogue colour field (basic colour terms, as product cards name them).
    "colours": ["black", "white", "grey", "blue", "red", "green", "yellow", "brown", "pink", "purple", "orange",
                "beige", "multi"],
    "deepfashion": [
        "Blazer", "Blouse", "Cardigan", "Dress", "Jacket", "Jeans", "Jumpsuit", "Romper", "Shorts",
        "Skirt", "Sweater", "Sweatpants", "Tank", "Tee", "Top",
    ],
}


@dataclass
class RetrainPolicy:
    head_every: int = 50  # a background head refresh after this many new human labels; 0 = never
    # A background full fine-tune after this many new human labels since the last one; 0 = never.
    full_every: int = 500
    full_at_round_close: bool = False  # ...and/or whenever a round has closed since the last one
    full_epochs: int = 5
    full_patience: int = 2  # epochs without a better validation accuracy before a fine-tune stops
    holdout_fraction_for_calibration: float = 0.1


@dataclass
class LabelingPolicy:
    overlap: int = 1  # annotators per item (>1 = agreement sampling)
    lease_minutes: int = 10


@dataclass
class Config:
    classes: list[str] = field(default_factory=list)  # the default field's (`storage.fields.DEFAULT_FIELD`)
    # The other label fields and their classes, e.g. {"colour": ["black", "white"]} ([fields] in TOML).
    fields: dict[str, list[str]] = field(default_factory=dict)
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
        fields = dict(data.get("fields", {}))
        for name, classes in fields.items():
            if name == DEFAULT_FIELD or not isinstance(classes, list):
                raise UserError(f"{CONFIG_NAME}: [fields] {name} must be a list of classes of a field other than "
                                f"{DEFAULT_FIELD!r} (whose classes are [project] classes)")
        try:
            return cls(
                **proj,
                fields={str(k): [str(c) for c in v] for k, v in fields.items()},
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
        if self.fields:
            lines += ["", "[fields]"] + [f"{k} = {val(v)}" for k, v in self.fields.items()]
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

    # ------------------------------------------------------------ label fields

    @property
    def field_names(self) -> list[str]:
        """Every label field, the default one first."""
        return [DEFAULT_FIELD, *self.config.fields]

    def check_field(self, name: str) -> str:
        if name not in self.field_names:
            raise UserError(f"no label field {name!r} in this project (fields: {', '.join(self.field_names)}; "
                            "add one with `active fields add NAME --classes a,b,c`)")
        return name

    def classes_of(self, field_name: str = DEFAULT_FIELD) -> list[str]:
        """The class list of a label field."""
        if field_name == DEFAULT_FIELD:
            return self.config.classes
        return self.config.fields[self.check_field(field_name)]

    def add_field(self, name: str, classes: list[str]) -> str:
        """Add a label field with its classes (existing labels are about the default field)."""
        try:
            name = check_field_name(name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if name in self.field_names:
            raise UserError(f"field {name!r} exists already: add classes with `active classes --field {name} add ...`")
        self.config.fields = {**self.config.fields, name: list(classes)}
        self.save()
        return name

    def add_classes(self, names: list[str], field_name: str = DEFAULT_FIELD) -> list[str]:
        """Append new classes to a field (existing labels are untouched); returns those actually added."""
        have = self.classes_of(field_name)
        added = [n for n in dict.fromkeys(names) if n not in have]
        if added:
            if field_name == DEFAULT_FIELD:
                self.config.classes = [*have, *added]
            else:
                self.config.fields = {**self.config.fields, field_name: [*have, *added]}
            self.save()
        return added

    def set_classes(self, names: list[str], field_name: str = DEFAULT_FIELD) -> None:
        """Replace a field's class list (a rename or a merge; the caller records the alias) and save."""
        if field_name == DEFAULT_FIELD:
            self.config.classes = list(names)
        else:
            self.config.fields = {**self.config.fields, self.check_field(field_name): list(names)}
        self.save()

    def check_class(self, name: str, field_name: str = DEFAULT_FIELD) -> str:
        classes = self.classes_of(field_name)
        if name not in classes:
            where = "the taxonomy" if field_name == DEFAULT_FIELD else f"field {field_name!r}"
            raise UserError(f"class {name!r} is not in {where} ({', '.join(classes)})")
        return name


def resolve_db_url(url: str, root: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str((root / url[len(prefix) :]).resolve())
    return url
