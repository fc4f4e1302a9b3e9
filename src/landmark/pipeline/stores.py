"""Making a store and building it from a dataset: the extractor and whitening it is made with, opening
it to finish an interrupted build, and leaving nothing behind when a build stores no photo. The writes
themselves (photos, local features, imported descriptors) are :class:`~landmark.pipeline.building.Building`'s."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import Config, check, load_config
from ..data import DatasetError, Manifest, read_dataset
from ..data.manifests import check_split_ids, has_gldv2_split, is_gldv2, read_gldv2
from ..features.engine import STORE_ENGINES_DIR
from ..features.extract import GlobalExtractor
from ..features.pipeline import (
    WHITENING_FILE,
    auto_learns_pca,
    base_extractor,
    build_extractor,
    learn_store_whitening,
)
from ..features.whitening import WhiteningError
from ..index import Store, StoreError
from ..index.store import check_signature
from ..recognition.holdout import validation_holdout
from ..recognition.setup import attach_prior
from .building import Building
from .context import StoreContext
from .results import BuildReport

log = logging.getLogger(__name__)


def default_splits(root: Path) -> tuple[str, ...]:
    """Which parts of a dataset make the database: GLDv2 train + index, or the whole folder."""
    return tuple(s for s in ("train", "index") if has_gldv2_split(root, s)) if is_gldv2(root) else ("db",)


def dataset_manifest(root: Path, split: str) -> Manifest:
    return read_gldv2(root, split) if is_gldv2(root) else read_dataset(root)


def checkpoints(config: Config) -> list[str]:
    """The trained checkpoints of ``config``'s model and ensemble members, in order."""
    return [m.checkpoint for m in (config.model, *config.ensemble) if m.checkpoint]


def open_store(store_dir: str | Path, device: str | None = None) -> StoreContext:
    """An existing store with the extractor it was built with."""
    store = Store.open(store_dir)
    return StoreContext(store, build_extractor(store.config, device=device, store_root=store.root))


def create_store(
    store_dir: str | Path,
    config: Config | None = None,
    *,
    device: str | None = None,
    overwrite: bool = False,
    base: GlobalExtractor | None = None,
) -> StoreContext:
    """Open the store at ``store_dir`` if it was made with ``config``, else make a new one (``base``:
    the un-whitened extractor of ``config`` where one is at hand, see :func:`build_extractor`)."""
    config = check(config) if config is not None else load_config()
    root = Path(store_dir)
    extractor = build_extractor(config, device=device, store_root=root, base=base)
    if (root / "meta.sqlite").exists() and not overwrite:
        store = Store.open(root)
        try:
            check_signature(store, extractor.signature)
        except StoreError as exc:
            built, given = checkpoints(store.config), checkpoints(config)
            same = (
                "to use the store as it is, give its model again (" + " ".join(f"--model {c}" for c in built) + "); "
                if built and len(built) == 1 + len(store.config.ensemble) and built != given
                else ""
            )
            store.close()
            raise StoreError(
                f"{exc}\n({same}to rebuild it with the new configuration: --overwrite, or "
                "overwrite=True in Python; or use another store directory)"
            ) from None
    else:
        store = Store.create(root, config, extractor.signature, overwrite=overwrite)
    return StoreContext(store, extractor, config)


def build_store(
    data: str | Path,
    store_dir: str | Path,
    config: Config | None = None,
    *,
    splits: Sequence[str] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    ray: Any = None,
) -> tuple[StoreContext, BuildReport]:
    """Build (or finish building) a store from a GLDv2 root or a folder of photos.

    ``ray`` (a :class:`landmark.distributed.RayConfig`) spreads the extraction over Ray actors.
    A GLDv2 root whose splits share photo ids is refused before any work (:func:`check_split_ids`);
    a resumed build skips the photos already stored (same file or same content, see
    :meth:`Building.add_manifest`). A build that makes the store and stores no photo (a missing or
    empty folder, no readable photo, any error before the first photo is stored) raises and leaves
    nothing behind: no empty store that would later open as a valid one (:func:`discard_unbuilt`).
    """
    root, store_dir = Path(data), Path(store_dir)
    config = check(config) if config is not None else load_config()
    new_store = not (store_dir / "meta.sqlite").exists()  # this build makes the store (else finishes or replaces one)
    before = {p.name for p in store_dir.iterdir()} if store_dir.is_dir() else None
    ctx: StoreContext | None = None
    try:
        if is_gldv2(root):  # before any extraction: a shared id would drop one of its two photos
            check_split_ids(root, splits or default_splits(root), queries=("test",))
        base = None  # the network the whitening was learned with serves the store too: built once
        if config.whitening.kind != "none":
            base = learn_whitening(
                root,
                store_dir,
                config,
                splits or default_splits(root),
                device=device,
                overwrite=overwrite,
                progress=progress,
            )
        ctx = create_store(store_dir, config, device=device, overwrite=overwrite, base=base)
        ctx.ray = ray
        building, report = Building(ctx), BuildReport()
        for split in splits or default_splits(root):
            manifest = dataset_manifest(root, split)
            ctx.store.set_label_names(manifest.label_names)
            building.add_manifest(manifest, split=split, progress=progress, report=report)
        if new_store and not len(ctx.store):
            bad = report.failures
            raise DatasetError(
                f"{root}: no photo could be read, so no store was made"
                + (f"; {len(bad)} unreadable: " + "; ".join(f"{f.path}: {f.reason}" for f in bad[:3]) if bad else "")
                + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
            )
    except BaseException:
        if new_store:
            if ctx is not None:
                ctx.close()
            discard_unbuilt(store_dir, before)
        raise
    assert ctx is not None  # made in the try
    return ctx, report


def discard_unbuilt(store_dir: Path, before: set[str] | None) -> bool:
    """Remove what a failed build that was making the store at ``store_dir`` left there, unless it is
    worth resuming (photos stored, extraction chunks or a learned whitening kept): the directory when
    the build made it, else the entries it added (``before``: the names that were there). Returns
    whether anything was removed."""
    if not store_dir.is_dir() or resumable(store_dir):
        return False
    if before is None:
        shutil.rmtree(store_dir, ignore_errors=True)
        return True
    for path in store_dir.iterdir():
        if path.name in before:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return True


def resumable(store_dir: Path) -> bool:
    """Whether re-running the build that was making ``store_dir`` would reuse anything found there."""
    if (store_dir / WHITENING_FILE).exists() or any((store_dir / "_work").glob("**/chunk-*.npz")):
        return True
    if not (store_dir / "meta.sqlite").exists():
        return False
    try:
        with Store.open(store_dir) as store:
            return len(store) > 0
    except Exception:  # noqa: BLE001 - a store that does not open (made halfway) holds nothing to resume
        return False


def learn_whitening(
    root: Path,
    store_dir: Path,
    config: Config,
    splits: Sequence[str],
    *,
    device: str | None,
    overwrite: bool,
    progress: bool | None,
):
    """Learn the store's whitening before the store is made: PCA on its ``whitening.learn_on`` split
    (the index, unlabelled), or the learned whitening on that split's labelled photos less those kept
    for validation (:func:`~landmark.recognition.holdout.validation_holdout`). Returns the
    un-whitened extractor it learned with (None where nothing was learned)."""
    wc = config.whitening
    if (
        (store_dir / "meta.sqlite").exists()
        and not overwrite
        and ((store_dir / WHITENING_FILE).exists() or wc.kind == "auto")
    ):
        return None  # an existing store keeps its whitening (auto: or its lack of one); create() checks the signature
    learn = [s for s in splits if wc.learn_on in (s, "all")] or list(splits)
    records = [r for s in learn for r in dataset_manifest(root, s).records]
    if wc.kind == "auto" and not auto_learns_pca(config, len(records)):
        log.info(
            "whitening.kind=auto: %d photos in %s are too few to learn %d PCA components; the store keeps the "
            "network's descriptors",
            len(records),
            " + ".join(learn),
            wc.dim,
        )
        return None
    held: set[str] = set()
    if wc.kind == "learned":
        labelled = [r for r in records if r.landmark_id is not None]
        if not labelled:
            named = "" if wc.learn_on in (*splits, "all") else f" (whitening.learn_on={wc.learn_on} is not built here)"
            raise WhiteningError(
                f"whitening.kind=learned is learned from labelled photos, and {root} has none in "
                f"{' + '.join(learn)}{named}: learn it on a labelled split (train of a GLDv2 root), "
                "or use whitening.kind=pca"
            )
        held = validation_holdout(config, labelled)
    base = base_extractor(config, device=device, engine_dir=store_dir / STORE_ENGINES_DIR)
    attach_prior(base, config.recognition)  # as the store's extractor will: it then reuses these photos' cache
    if wc.kind == "learned" and wc.shrinkage <= 0:  # rank of the within-landmark covariance <= photos - landmarks
        rest = [r for r in labelled if r.id not in held]
        if len(rest) - len({r.landmark_id for r in rest}) < base.dim:
            raise WhiteningError(
                f"{len(rest)} labelled photos of {len({r.landmark_id for r in rest})} landmarks leave "
                f"the within-landmark covariance of {base.dim}-d descriptors singular: set "
                "whitening.shrinkage > 0 (0.2 in lite2-gem-lw)"
            )
    # the store's extraction of that split reads the same cache (its extractor is this one, whitened), then removes it
    cache = store_dir / "_work" / f"extract-{learn[0]}" if len(learn) == 1 else None
    learn_store_whitening(config, base, records, store_dir, cache_dir=cache, progress=progress, held_out=sorted(held))
    return base
