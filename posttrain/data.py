"""Training data for post-training: the datagen output's views, or any HF dataset.

`load_view(source, view, split)` reads one table from
- a datagen output directory (its dataset card declares the views as configs, so this is
  `datasets.load_dataset(DIR, "sft", split="train")`; DPO reads the "dpo" view the same way),
- a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`,
- a directory of Parquet / JSON Lines files, or one such file,
- a hub id (`org/name`; offline machines need it in the HF datasets cache).
A dataset that declares no configs is read as its default config whatever the view.

Every row a trainer cannot use is counted by reason in a `DataReport`, which the trainer prints
and writes next to the model — nothing is dropped silently. SFT's chat rows: posttrain/trainers/sft_data.py;
preference pairs: posttrain/pairs.py.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_HOW_TO_GET_DATA = ("Run the datagen demo first (`python -m pipelines.synth` writes out/synth) or pass "
                    "--dataset DIR|FILE|HUB_ID")
_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


class DataError(ValueError):
    """The dataset cannot be used; the message names the source and the problem."""


@dataclass
class DataReport:
    """What happened to the rows: read, skipped by reason, used for train and eval."""

    source: str
    view: str
    rows_read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason → rows
    train_rows: int = 0
    eval_rows: int = 0
    max_length: int = 0

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] = self.skipped.get(reason, 0) + count

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items())) or "none"
        return (f"data {self.source} [{self.view}]: {self.rows_read} rows read, {self.skipped_total} skipped "
                f"({reasons}), {self.train_rows} train, {self.eval_rows} eval")

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- reading


def load_view(source: str, view: str = "", split: str = "train"):
    """One split of one view of a dataset (see the module docstring for accepted sources)."""
    import datasets

    if not source:
        raise DataError("no dataset given: pass --dataset DIR|FILE|HUB_ID")
    path = Path(source).expanduser()
    try:
        if path.is_file():
            return _load_files(path, split)
        if path.is_dir():
            if _is_saved_to_disk(path):
                return _load_saved(path, split)
            return _load_dir(path, view, split)
    except DataError:
        raise
    except (ValueError, KeyError, OSError) as err:
        raise DataError(f"cannot read dataset {source}: {_first_line(err)}") from None
    if not _looks_like_hub_id(source):
        raise DataError(f"dataset {source} not found: no such file or directory, and not a hub id (org/name). "
                        f"{_HOW_TO_GET_DATA}")
    try:
        return datasets.load_dataset(source, _config_for(source, view), split=split)
    except DataError:
        raise
    except (ValueError, KeyError, OSError, ConnectionError) as err:
        raise DataError(f"dataset {source} not found: no such directory here, and the hub did not provide it "
                        f"({_first_line(err)}). {_HOW_TO_GET_DATA}") from None


def _load_files(path: Path, split: str):
    import datasets

    suffix = path.suffix.lower()
    if suffix not in _FILE_BUILDERS:
        raise DataError(f"{path}: unsupported file type {suffix!r} (use {', '.join(sorted(_FILE_BUILDERS))})")
    if split != "train":
        raise DataError(f"{path}: a single file has only the split 'train', not {split!r}")
    return datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train")


def _load_dir(path: Path, view: str, split: str):
    """A local dataset directory, its files found through its card's configs, then read by file type.
    Not `load_dataset(DIR, view)`: the datasets cache keys a local directory's config by its path, so
    a directory rewritten in place (a second synth run to the same --output) read back the old rows."""
    import datasets

    builder = datasets.load_dataset_builder(str(path), _config_for(str(path), view))
    files = {name: [str(f) for f in found] for name, found in (builder.config.data_files or {}).items()}
    if not files.get(split):
        raise DataError(f"dataset {path} has no {split!r} split (splits: {', '.join(files) or 'none'})")
    suffixes = {Path(f).suffix.lower() for f in files[split]}
    if len(suffixes) != 1 or not suffixes <= set(_FILE_BUILDERS):
        raise DataError(f"dataset {path}: {split} files of types {', '.join(sorted(suffixes))} "
                        f"(one of {', '.join(sorted(_FILE_BUILDERS))} expected)")
    # a file builder's cache key includes each file's modification time
    return datasets.load_dataset(_FILE_BUILDERS[suffixes.pop()], data_files={split: files[split]}, split=split)


def _is_saved_to_disk(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_saved(path: Path, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except IndexError:  # datasets 5.2 cannot read back a dataset saved with zero rows
        raise DataError(f"dataset {path} is empty (load_from_disk found no rows)") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"{path} has no split {split!r} (splits: {', '.join(loaded)})")
        return loaded[split]
    if split != "train":
        raise DataError(f"{path} holds a single Dataset; only split 'train' exists, not {split!r}")
    return loaded


def _config_for(source: str, view: str) -> str | None:
    """The dataset config to read: the view if declared, the default when none are declared."""
    import datasets

    if not view:
        return None
    names = datasets.get_dataset_config_names(source)
    if view in names:
        return view
    if set(names) <= {"default"}:
        log.info("%s declares no %r config: reading its default config", source, view)
        return None
    raise DataError(f"dataset {source} has no view {view!r} (configs: {', '.join(names)}; "
                    "a datagen output lists a view only when it has rows)")


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and " " not in source


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def require_columns(ds, columns: list[str] | tuple[str, ...], source: str) -> None:
    """A clear error naming the missing columns and the ones that exist."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"dataset {source} lacks column(s) {', '.join(missing)} "
                        f"(columns: {', '.join(ds.column_names) or 'none'})")


def hold_out(ds, fraction: float, seed: int):
    """(train, eval) with at least one eval row when fraction > 0; eval is None when fraction == 0."""
    if fraction == 0:
        return ds, None
    if len(ds) < 2:
        raise DataError(f"{len(ds)} usable row(s) cannot be split into train and eval: "
                        "add data or set --data.eval_fraction 0")
    n_eval = min(len(ds) - 1, max(1, round(len(ds) * fraction)))
    parts = ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)
    return parts["train"], parts["test"]
