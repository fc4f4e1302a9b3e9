"""``landmark search`` and ``landmark recognize``: query a store."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from .app import DeviceOpt, ProgressOpt, StoreOpt, err, friendly, out
from .output import landmark_label, output_format, print_failures, print_json, print_rows, table


@friendly
def search(
    photos: list[Path] = typer.Argument(..., help="Query photos, or folders of them."),
    store: Path = StoreOpt,
    k: int = typer.Option(10, "-k", min=1, help="Results per query."),
    split: list[str] | None = typer.Option(None, "--split", help="Only search these splits of the store."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (a list of {query, matches, error})."),
    as_csv: bool = typer.Option(
        False, "--csv", help="Print CSV: query,rank,id,score,inliers,landmark_id,landmark,path (one row per match)."
    ),
    rerank: bool | None = typer.Option(
        None,
        "--rerank/--no-rerank",
        help="Re-rank with local-feature verification (default: when the store has local features).",
    ),
    expand: bool | None = typer.Option(
        None,
        "--expand/--no-expand",
        help="DBA on the database and alpha-QE on the queries (default: as configured, on exact stores of up to "
        "expansion.search_max photos; on others once `landmark index expand` made their DBA set).",
    ),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """The most similar stored photos for each query photo: a table per query on a terminal; tab-separated
    rows with whole ids (the columns of --csv) when stdout is a pipe or a file."""
    from ..api import Landmarks
    from ..data import read_photos
    from ..utils.progress import progress_bar

    fmt = output_format(as_json, as_csv)
    lm = Landmarks.open(store, device=device, warm=False)
    paths = [str(r.path) for r in read_photos(photos).records]
    step = max(16, 2 * lm.store.config.extract.batch_size)  # queries a progress step: embedded together
    results = []
    with progress_bar("search", total=len(paths), enabled=progress) as bar:
        for lo in range(0, len(paths), step):
            part = paths[lo : lo + step]
            results += lm.search(part, k=k, splits=split or None, progress=False, rerank=rerank, expand=expand)
            bar.advance(len(part))
    for r in results:
        if r.error:
            err.print(f"[red]{r.query}: {r.error}[/]", highlight=False)
    columns = ("query", "rank", "id", "score", "inliers", "landmark_id", "landmark", "path")
    rows = [
        (r.query, i, m.id, f"{m.score:.4f}", m.inliers, m.landmark_id, m.name, m.path)
        for r in results
        for i, m in enumerate(r.matches, 1)
    ]
    if fmt == "json":
        print_json([asdict(r) for r in results])
    elif fmt != "table":
        print_rows(columns, rows, fmt)
    for r in results if fmt == "table" else []:
        if not r.error:
            out.print(
                table(
                    ("rank", "id", "score", "inliers", "landmark", "path"),
                    [
                        (
                            i,
                            m.id,
                            f"{m.score:.4f}",
                            "-" if m.inliers is None else m.inliers,
                            landmark_label(m.landmark_id, m.name),
                            m.path,
                        )
                        for i, m in enumerate(r.matches, 1)
                    ],
                    title=r.query,
                )
            )
    if any(r.error for r in results):
        raise typer.Exit(1)


@friendly
def recognize(
    photos: list[Path] = typer.Argument(..., help="Photos, folders, or a GLDv2 root (its test split)."),
    store: Path = StoreOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (each photo with its neighbours and evidence)."),
    as_csv: bool = typer.Option(
        False,
        "--csv",
        help="Print CSV: photo,landmark_id,landmark,score,grade,votes,path (one row per photo; photo is its id).",
    ),
    kaggle_csv: Path | None = typer.Option(
        None,
        "--kaggle-csv",
        help="Also write a Kaggle recognition submission here (id,landmarks; what --csv PATH wrote before).",
    ),
    device: str | None = DeviceOpt,
    progress: bool | None = ProgressOpt,
):
    """Recognise the landmark in each photo: top-5 vote among labelled stored photos, non-landmark filters, grading.
    A table on a terminal; tab-separated rows (the columns of --csv) when stdout is a pipe or a file."""
    from ..api import Landmarks
    from ..data import read_photos
    from ..data.manifests import is_gldv2, read_gldv2
    from ..evaluation.submission import write_recognition_csv

    fmt = output_format(as_json, as_csv)
    if as_csv and any(p.suffix.lower() == ".csv" for p in photos):
        raise typer.BadParameter(
            "--csv prints CSV to stdout; a Kaggle recognition CSV is now written with --kaggle-csv PATH",
            param_hint="--csv",
        )
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
    if kaggle_csv:
        write_recognition_csv(
            kaggle_csv,
            {r.query: (r.landmark_id, r.score) if r.landmark_id is not None else None for r in recs},
            ids=manifest.ids(),
        )
    print_failures(result.failures)
    k = lm.store.config.recognition.k
    if fmt == "json":
        print_json([asdict(r) | {"neighbours": [asdict(m) for m in r.neighbours]} for r in recs])
    elif fmt != "table":
        print_rows(
            ("photo", "landmark_id", "landmark", "score", "grade", "votes", "path"),
            [(r.query, r.landmark_id, r.name, f"{r.score:.4f}", r.grade, r.votes, paths[r.query]) for r in recs],
            fmt,
        )
    elif recs:
        out.print(
            table(
                ("photo", "landmark", "score", "grade", "votes"),
                [
                    (r.query, landmark_label(r.landmark_id, r.name), f"{r.score:.4f}", r.grade or "-", f"{r.votes}/{k}")
                    for r in recs
                ],
            )
        )
    if result.failures:  # as `search`: the readable photos are answered, the exit status says some were not
        raise typer.Exit(1)
