"""``landmark evaluate``, ``evaluate-revisited``, ``calibrate`` and ``cluster``: score and tune a store."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

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
from .output import get_data_help, print_ablation, print_recognition_ablation


@friendly
def evaluate(
    data: Path = typer.Argument(..., help="GLDv2-layout dataset root with solution CSVs."),
    out_dir: Path = typer.Option(
        Path("runs/evaluate"), "--out", "-o", help="Where the report, submissions and store go."
    ),
    store: Path | None = typer.Option(None, "--store", "-s", help="Store directory (default: OUT/store)."),
    preset: str | None = PresetOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    model: list[Path] | None = ModelOpt,
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
    multiscale: bool = typer.Option(
        False, "--multiscale", help="Add the multi-scale ablation row (extracts index + test again at 3 scales)."
    ),
    calibrate: bool | None = typer.Option(
        None,
        "--calibrate/--no-calibrate",
        help="Refit the recognition and DBA / alpha-QE thresholds on the train split first (default: if never done).",
    ),
    focus: str | None = typer.Option(
        None, "--focus", help="Landmark ids whose queries also get their own mAP row, e.g. 900001-900006,42."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Rebuild the store from scratch (needed when it was built with another model, preset or --set).",
    ),
):
    """Build the store from train + index, answer the test queries, print GAP / accuracy / mAP@100 (what the
    dataset allows: a collection without labels is scored for retrieval only) and what calibration decided."""
    from ..data.manifests import is_gldv2
    from ..evaluation.run import evaluate_gldv2, parse_landmark_ids

    if not is_gldv2(data):
        err.print(f"[red]error:[/] {escape(get_data_help(data))}", highlight=False)
        raise typer.Exit(2)
    try:
        focused = parse_landmark_ids(focus or "")
    except ValueError as exc:
        err.print(f"[red]--focus: {exc}[/]")
        raise typer.Exit(2) from None
    report = evaluate_gldv2(
        data,
        out_dir,
        options_config(preset, config, set_, model),
        store_dir=store,
        device=device,
        progress=progress,
        multiscale=multiscale,
        calibrate=calibrate,
        focus=focused,
        overwrite=overwrite,
    )
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
            table.add_row(
                f"mAP@100 global / re-ranked / category first ({tag})",
                " / ".join(
                    [f"{m[f'map@100{scope}_global']:.4f}"] + ["-" if v is None else f"{v:.4f}" for v in (rer, cat)]
                ),
            )
    table.add_row(
        "queries / landmark / retrieval", f"{m['queries']} / {m['landmark_queries']} / {m['retrieval_queries']}"
    )
    table.add_row(
        "store build / test extraction / search (s)",
        f"{t['build_store_s']:.1f} / {t['extract_test_s']:.1f} / {t.get('search_s', 0.0):.2f}",
    )
    if "rerank_s" in t:
        table.add_row(
            "local features of queries / re-ranking (s, pairs/s)",
            f"{t['extract_local_queries_s']:.1f} / {t['rerank_s']:.1f} ({t['rerank_pairs_per_s']:.0f})",
        )
    table.add_row("unreadable photos skipped", str(len(report["failures"])))
    out.print(table)
    for part, why in (m.get("skipped") or {}).items():
        out.print(f"[yellow]{part} not scored:[/] {why}")
    for stage, why in (report.get("calibration_decisions") or {}).items():
        out.print(f"calibration: {stage}: {why}")
    if m.get("ablation"):
        print_ablation(m["ablation"])
    print_recognition_ablation(m.get("recognition_ablation") or [])
    out.print(f"report: {out_dir / 'report.json'}\nsubmissions: {', '.join(report['submissions'])}")


@friendly
def evaluate_revisited_cmd(
    root: Path = typer.Argument(
        ..., help="revisitop data root: ROOT/roxford5k/{gnd_roxford5k.pkl,jpg/}, ROOT/rparis6k/..."
    ),
    dataset: list[str] | None = typer.Option(None, "--dataset", "-d", help="roxford5k | rparis6k (default: both)."),
    preset: str | None = PresetOpt,
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    model: list[Path] | None = ModelOpt,
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
    out_file: Path | None = typer.Option(None, "--out", "-o", help="Also write the results as JSON here."),
):
    """ROxford5k / RParis6k mAP and mP@1,5,10 (Easy / Medium / Hard; junk ignored, queries cropped to their box)."""
    from ..evaluation.revisited import DATASETS, evaluate_revisited
    from ..features.pipeline import base_extractor
    from ..utils.io import atomic_write_json

    cfg = options_config(preset, config, set_, model)
    res = evaluate_revisited(
        root,
        base_extractor(cfg, device=device),
        dataset or DATASETS,
        expansion={"dba": cfg.expansion.dba, "qe": cfg.expansion.qe},
        progress=progress,
    )
    table = Table(title=f"landmark evaluate-revisited: {root}", title_justify="left")
    for col in ("dataset", "setup", "mAP", "mP@1", "mP@5", "mP@10"):
        table.add_column(col)
    for name, setups in res.items():
        for setup, r in setups.items():
            table.add_row(name, setup, f"{r['map']:.4f}", *(f"{r[f'mp@{k}']:.4f}" for k in (1, 5, 10)))
    out.print(table)
    if out_file:
        atomic_write_json(out_file, res)


@friendly
def calibrate_cmd(
    data: Path | None = typer.Argument(
        None, help="GLDv2 root: only its train split's photos are used (default: all labelled store photos)."
    ),
    store: Path = StoreOpt,
    val_fraction: float = typer.Option(
        0.15,
        "--val-fraction",
        help="Photos of each landmark held out as validation queries (a store of a `landmark train` model validates "
        "on the photos that model held out instead, one with a learned whitening on the photos it was not learned on).",
    ),
    seed: int = typer.Option(0, "--seed", help="Split seed (as --val-fraction)."),
    landmark_loss: float = typer.Option(
        0.02, "--landmark-loss", help="Share of validation landmarks a filter may reject."
    ),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Refit the recognition thresholds (object prior, distractor filter, grading t1/t2), the DBA /
    alpha-QE verification threshold and the category re-rank (on/off, similarity) on validation splits
    carved from the labelled photos; writes them into the store's config. Never reads test data."""
    from ..api import Landmarks
    from ..data.manifests import is_gldv2, read_gldv2

    lm = Landmarks.open(store, device=device, warm=False)
    train_ids = read_gldv2(data, "train").ids() if data is not None and is_gldv2(data) else None
    fitted = lm.calibrate(
        train_ids=train_ids, val_fraction=val_fraction, seed=seed, landmark_loss=landmark_loss, progress=progress
    )
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
        table.add_row(
            "category re-rank", f"on, min_similarity {cat['min_similarity']:.2f}" if cat["enabled"] else "off"
        )
        table.add_row(
            "validation_map@100_category", f"{cat['validation_map_before']:.4f} -> {cat['validation_map']:.4f}"
        )
    out.print(table)
    out.print_json(json.dumps(report["validation"]))


@friendly
def cluster_cmd(
    store: Path = StoreOpt,
    out_csv: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="CSV of id,landmark_id to write (train with --set data.split=SPLIT --set data.labels=THIS).",
    ),
    split: str = typer.Option("index", "--split", help="Stored split to cluster."),
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=-1.0,
        max=1.0,
        help="Cosine similarity that joins two mutual "
        "neighbours (default: the lowest giving 99 % pure clusters of the "
        "store's labelled photos).",
    ),
    neighbours: int = typer.Option(10, "--neighbours", min=1, help="k of the mutual k-NN graph."),
    min_size: int = typer.Option(3, "--min-size", min=2, help="Smallest cluster kept."),
    landmarks_only: bool = typer.Option(
        True, "--landmarks-only/--all-photos", help="Leave out the photos recognition knows are not landmarks."
    ),
):
    """Cluster a split's stored photos into pseudo-landmarks, another training set (Baidu GLR19 §2.1.1:
    a model fine-tuned on the clustered index set, concatenated with the others)."""
    import numpy as np

    from ..api import Landmarks
    from ..training.pseudo import ClusterConfig, write_labels

    lm = Landmarks.open(store, warm=False)
    res = lm.cluster(
        split,
        ClusterConfig(neighbours=neighbours, threshold=threshold, min_size=min_size),
        landmarks_only=landmarks_only,
    )
    n = write_labels(out_csv, res.ids, res.clusters)
    sizes = np.bincount(res.clusters[res.clusters >= 0]) if n else np.zeros(0, int)
    out.print(
        f"[green]clusters[/] {out_csv}: {n} of {len(res.ids)} photos of split {split!r} in {len(sizes)} clusters "
        f"(sizes {', '.join(map(str, sizes[:12]))}{', ...' if len(sizes) > 12 else ''}); threshold {res.threshold:.3f} "
        f"({res.chosen_on})"
    )
    if res.choice is not None:
        row = next(r for r in res.choice.rows if r["threshold"] == res.threshold)
        out.print(
            f"  on those photos: purity {row['purity']:.3f}, {row['coverage']:.0%} clustered, "
            f"{row['clusters']} clusters"
        )
    if not n:
        err.print(
            f"[yellow]no cluster of {min_size} or more photos[/]: nothing to train on (lower --threshold or --min-size)"
        )
        raise typer.Exit(1)
