"""``landmark search`` and ``landmark recognize``: query a store."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer
from rich.table import Table

from .app import DeviceOpt, ProgressOpt, StoreOpt, err, friendly, out
from .output import landmark_label, print_failures


@friendly
def search(
    photos: list[Path] = typer.Argument(..., help="Query photos, or folders of them."),
    store: Path = StoreOpt,
    k: int = typer.Option(10, "-k", min=1, help="Results per query."),
    split: list[str] | None = typer.Option(None, "--split", help="Only search these splits of the store."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    rerank: bool | None = typer.Option(
        None,
        "--rerank/--no-rerank",
        help="Re-rank with local-feature verification (default: when the store has local features).",
    ),
    expand: bool | None = typer.Option(
        None,
        "--expand/--no-expand",
        help="DBA on the database and alpha-QE on the queries (default: as configured, on exact indexes).",
    ),
    device: str | None = DeviceOpt,
):
    """The most similar stored photos for each query photo."""
    from ..api import Landmarks
    from ..data import read_photos

    lm = Landmarks.open(store, device=device, warm=False)
    results = lm.search(
        [str(r.path) for r in read_photos(photos).records],
        k=k,
        splits=split or None,
        progress=False,
        rerank=rerank,
        expand=expand,
    )
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
            table.add_row(
                str(i),
                m.id,
                f"{m.score:.4f}",
                "-" if m.inliers is None else str(m.inliers),
                landmark_label(m.landmark_id, m.name),
                m.path or "",
            )
        out.print(table)
    if any(r.error for r in results):
        raise typer.Exit(1)


@friendly
def recognize(
    photos: list[Path] = typer.Argument(..., help="Photos, folders, or a GLDv2 root (its test split)."),
    store: Path = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write a Kaggle recognition CSV here."),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Recognise the landmark in each photo: top-5 vote among labelled stored photos, non-landmark filters, grading."""
    from ..api import Landmarks
    from ..data import read_photos
    from ..data.manifests import is_gldv2, read_gldv2
    from ..evaluation.submission import write_recognition_csv

    lm = Landmarks.open(store, device=device, warm=False)
    if len(photos) == 1 and photos[0].is_dir() and is_gldv2(photos[0]):
        manifest = read_gldv2(photos[0], "test")
    else:
        manifest = read_photos(photos)
    result = lm.embed(manifest, progress=progress, queries=True)
    paths = {r.id: r.path for r in manifest.records}
    recs = lm.recognising.recognize_vectors(
        result.vectors,
        extras=result.extras,
        ids=result.ids,
        detections=lm.detect([paths[q] for q in result.ids], progress=progress),
        local=lm.recognising.query_local_features({q: paths[q] for q in result.ids}),
        progress=progress,
    )
    if csv:
        write_recognition_csv(
            csv,
            {r.query: (r.landmark_id, r.score) if r.landmark_id is not None else None for r in recs},
            ids=manifest.ids(),
        )
    print_failures(result.failures)
    if as_json:
        print(json.dumps([asdict(r) | {"neighbours": [asdict(m) for m in r.neighbours]} for r in recs], indent=2))
    elif recs:
        table = Table()
        for col in ("photo", "landmark", "score", "grade", "votes"):
            table.add_column(col)
        for r in recs:
            table.add_row(
                r.query,
                landmark_label(r.landmark_id, r.name),
                f"{r.score:.4f}",
                r.grade or "-",
                f"{r.votes}/{lm.store.config.recognition.k}",
            )
        out.print(table)
    if result.failures:  # as `search`: the readable photos are answered, the exit status says some were not
        raise typer.Exit(1)
