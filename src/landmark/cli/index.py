"""``landmark index ...``: build and change a store."""

from __future__ import annotations

import json
from dataclasses import asdict, astuple
from pathlib import Path

import typer

from .app import (
    ConfigOpt,
    DeviceOpt,
    ModelOpt,
    PresetOpt,
    ProgressOpt,
    SetOpt,
    StoreOpt,
    err,
    friendly,
    options_config,
    out,
)
from .output import (
    calibration_summary,
    output_format,
    print_failures,
    print_json,
    print_renamed,
    print_rows,
    renamed_note,
)


@friendly
def index_build(
    data: Path = typer.Argument(..., help="GLDv2 root (train.csv, index.csv, ...) or a folder of photos."),
    store: Path = StoreOpt,
    preset: str | None = PresetOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    model: list[Path] | None = ModelOpt,
    split: list[str] | None = typer.Option(None, "--split", help="GLDv2 splits to add (default: train and index)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store built with another configuration."),
    ray: str | None = typer.Option(
        None,
        "--ray",
        help="Extract on Ray: 'local' (this machine's cores), 'auto' (the running cluster) or ray://HOST:PORT.",
    ),
    ray_actors: int = typer.Option(2, "--ray-actors", help="Extractor replicas on Ray."),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="GPUs per Ray actor (e.g. 1 on a GPU cluster)."),
    ray_shard: int = typer.Option(128, "--ray-shard", help="Photos per Ray task (the unit of work and of resume)."),
    ray_scheduler: str = typer.Option(
        "actors", "--ray-scheduler", help="actors (re-queues the shards of lost actors) or data (Ray Data)."
    ),
    calibrate: bool | None = typer.Option(
        None,
        "--calibrate/--no-calibrate",
        help="Fit the recognition and DBA / alpha-QE thresholds on the labelled photos "
        "once built, as `landmark calibrate` does (default: if the store never had them).",
    ),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Build a store from a dataset; re-running it finishes an interrupted build."""
    from ..api import Landmarks
    from ..index import StoreError
    from ..recognition.calibrate import CALIBRATION_META

    ray_cfg = None
    if ray:
        from ..distributed import RayConfig

        ray_cfg = RayConfig(
            address=None if ray == "local" else ray,
            actors=ray_actors,
            gpus_per_actor=ray_gpus,
            shard_size=ray_shard,
            scheduler=ray_scheduler,
        )
    cfg = options_config(preset, config, set_, model)
    lm, report = Landmarks.build(
        data, store, cfg, splits=split or None, device=device, overwrite=overwrite, progress=progress, ray=ray_cfg
    )
    print_failures(report.failures)
    print_renamed(report.renamed)
    info = lm.store.info()
    filled = sum(report.filled.values())
    out.print(
        f"[green]store[/] {store}: {info['images']} photos ({info['labelled']} labelled, "
        f"{info['landmarks']} landmarks), added {sum(report.added.values())}{renamed_note(report.renamed)}, "
        f"already present {sum(report.skipped.values()) - filled}, skipped {len(report.failures)} unreadable"
        + (f", filled in local features of {filled} photos that lacked them" if filled else "")
    )
    if calibrate or (calibrate is None and info["labelled"] and lm.store.meta_value(CALIBRATION_META) is None):
        try:
            fitted = lm.calibrate(respect=cfg, progress=progress)  # what --set chose stays
        except StoreError as exc:  # e.g. too few photos per landmark for a validation split
            if calibrate:
                raise
            err.print(f"[yellow]not calibrated[/] (the paper's default thresholds stay): {exc}")
        else:
            out.print(calibration_summary(fitted))


@friendly
def index_add(
    photos: list[Path] = typer.Argument(..., help="Photos or folders of photos."),
    store: Path = StoreOpt,
    landmark_id: int | None = typer.Option(None, "--landmark-id", help="Label for all added photos."),
    name: str | None = typer.Option(None, "--name", help="Name of that landmark."),
    split: str = typer.Option(
        "user",
        "--split",
        help="Tag stored with the photos; 'distractors' = known non-landmarks for the distractor filter.",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON: the counts and, under 'photos', each photo's path, id, status and note."
    ),
    as_csv: bool = typer.Option(
        False,
        "--csv",
        help="Print CSV: path,id,status,note, one row per photo (status: added, present, filled or unreadable).",
    ),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Add photos to a store (ids are the file names). Re-running it after an interrupted add finishes it:
    stored photos that lack local features get them ("filled in")."""
    from ..api import Landmarks

    fmt = output_format(as_json, as_csv)
    lm = Landmarks.open(store, device=device, warm=False)
    report = lm.add_photos(photos, landmark_id=landmark_id, split=split, name=name, progress=progress)
    print_failures(report.failures)
    added, present, filled = (sum(d.values()) for d in (report.added, report.skipped, report.filled))
    if fmt == "json":
        print_json(
            {
                "added": added,
                "present": present - filled,
                "filled": filled,
                "unreadable": sum(p.status == "unreadable" for p in report.photos),
                "renamed": len(report.renamed),
                "store_images": len(lm.store),
                "photos": [asdict(p) for p in report.photos],
            }
        )
        return
    if fmt == "csv":
        print_rows(("path", "id", "status", "note"), [astuple(p) for p in report.photos], fmt)
        return
    print_renamed(report.renamed)
    out.print(
        f"added {added} photos{renamed_note(report.renamed)}, {present - filled} already present (same id, "
        f"same content)"
        + (f", filled in local features of {filled} photos that lacked them" if filled else "")
        + f"; store now holds {len(lm.store)}"
    )


@friendly
def index_import(
    vectors: Path = typer.Argument(..., help="N x D descriptors (.npy), e.g. from a Spark or Ray job."),
    ids: Path = typer.Argument(
        ..., help="CSV with an 'id' column (and optionally 'landmark_id', 'path'), one row per vector, in order."
    ),
    store: Path = StoreOpt,
    preset: str | None = PresetOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    split: str = typer.Option("index", "--split", help="Tag stored with the imported photos."),
    batch_size: int = typer.Option(100_000, "--batch-size", help="Rows per commit."),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Import descriptors computed elsewhere into a store (made with the configuration if absent); resumable."""
    import csv as csvlib

    import numpy as np

    from ..api import Landmarks
    from ..index import StoreError

    if not vectors.is_file():
        raise FileNotFoundError(f"vectors file not found: {vectors}")
    try:
        array = np.load(vectors, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise StoreError(f"{vectors}: not a .npy array of vectors ({exc})") from None
    with open(ids, newline="") as fh:
        rows = list(csvlib.DictReader(fh))
    if not rows or "id" not in rows[0]:
        raise StoreError(f"{ids}: expected a CSV with an 'id' column (and optionally 'landmark_id', 'path')")
    try:
        labels = (
            [int(r["landmark_id"]) if r.get("landmark_id") else None for r in rows]
            if "landmark_id" in rows[0]
            else None
        )
    except ValueError as exc:
        raise StoreError(f"{ids}: landmark_id must be an integer or empty ({exc})") from None
    paths = [r.get("path") or None for r in rows] if "path" in rows[0] else None
    if (store / "meta.sqlite").exists():
        lm = Landmarks.open(store, device=device, warm=False)
    else:
        lm = Landmarks.create(store, options_config(preset, config, set_), device=device)
    report = lm.import_vectors(
        array,
        [r["id"] for r in rows],
        landmark_ids=labels,
        paths=paths,
        split=split,
        batch_size=batch_size,
        progress=progress,
    )
    out.print(
        f"imported {report.added[split]} vectors, {report.skipped[split]} already present; "
        f"store now holds {len(lm.store)}"
    )


@friendly
def index_remove(ids: list[str] = typer.Argument(..., help="Ids of stored photos."), store: Path = StoreOpt):
    """Remove photos from a store by id."""
    from ..index import Store
    from ..index.local import LOCAL_DIR, LocalStore

    local = LocalStore.open_if_exists(store / LOCAL_DIR)
    if local is not None:
        local.remove(ids)
    with Store.open(store) as st:
        unknown = sorted(set(ids) - set(st.get(ids)))
        n = st.remove(ids)
        out.print(f"removed {n} of {len(ids)} ids; store now holds {len(st)}")
    if unknown:
        err.print(
            f"[yellow]not in the store:[/] {', '.join(unknown[:20])}"
            + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        )
        raise typer.Exit(1)


@friendly
def index_expand(
    store: Path = StoreOpt,
    restart: bool = typer.Option(False, "--restart", help="Augment every photo again (e.g. after many additions)."),
    limit: int | None = typer.Option(None, "--limit", help="Augment at most this many photos this run."),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Augment every stored photo by DBA through the store's index (resumable), so that search runs DBA /
    alpha-QE on a large or compressed store."""
    from ..api import Landmarks

    lm = Landmarks.open(store, device=device, warm=False)
    report = lm.expand(restart=restart, limit=limit, progress=progress)
    out.print(
        f"augmented {report.augmented} photos in {report.seconds:.1f} s ({report.voted} unlabelled photos voted)"
        f"{'' if report.remaining else ', indexed'}; DBA: {report.status.line}"
    )


@friendly
def index_info(store: Path = StoreOpt):
    """Show what a store holds (JSON): photos, which model made it, its local features (``missing``: stored photos
    without any), and which stages its calibration switched on or off and why."""
    from ..evaluation.calibration import store_calibration_decisions
    from ..index import Store
    from ..index.local import local_coverage
    from ..recognition.calibrate import store_recognition
    from ..retrieval.augment import augment_status

    with Store.open(store) as st:
        local = local_coverage(st)
        dba = augment_status(st, st.config.expansion, store_recognition(st).k, st.config.rerank.verified_inliers).line
        out.print_json(
            json.dumps(
                st.info() | {"local_features": local, "calibration": store_calibration_decisions(st), "dba": dba}
            )
        )
    if local and local["missing"]:
        err.print(
            f"[yellow]{local['missing']} stored photo(s) have no local features[/] (an interrupted add or build?): "
            "run that `landmark index add` or `landmark index build` again to fill them in"
        )
