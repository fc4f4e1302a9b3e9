"""The ``landmark`` typer apps, the options the commands share, and how errors reach the user."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console

from ..config import ConfigError, load_config
from ..errors import LandmarkError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Landmark recognition and retrieval: build a store of photos, search it, recognise landmarks, evaluate.",
)


index_app = typer.Typer(
    no_args_is_help=True, help="Build and change the embedded store (FAISS + SQLite in one directory)."
)
app.add_typer(index_app, name="index")

out = Console(soft_wrap=True)


err = Console(stderr=True, soft_wrap=True)

StoreOpt = typer.Option(..., "--store", "-s", help="Store directory.")
PresetOpt = typer.Option(None, "--preset", "-p", help="Named configuration preset (see `landmark models`).")
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file with configuration overrides.")
SetOpt = typer.Option(None, "--set", help="Override one key, e.g. --set extract.image_size=512 (repeatable).")
ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    help="A trained checkpoint (landmark train's model.pt) instead of ImageNet weights; "
    "repeat it to concatenate several models' descriptors (the first is `model`, the others `ensemble`).",
)
DeviceOpt = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: from the config).")
ProgressOpt = typer.Option(None, "--progress/--no-progress", help="Show progress bars (default: on a terminal).")


def options_config(preset, config_file, overrides, models: Sequence[Path] | None = None):
    from ..models import read_checkpoint

    extra = []
    if models:
        first, *rest = [Path(m).resolve() for m in models]
        extra.append(f"model.checkpoint={first}")
        if rest:
            if load_config(preset, config_file, overrides or []).ensemble:
                raise ConfigError(
                    "ensemble: give the extra models either as --model or in the configuration "
                    "(--preset, --config, --set ensemble=...), not both"
                )
            # each member names its checkpoint's backbone, so the store's config says which networks it holds
            members = [
                {"backbone": read_checkpoint(m)["model_config"].get("backbone"), "checkpoint": str(m)} for m in rest
            ]
            extra.append("ensemble=" + json.dumps(members))
    return load_config(preset, config_file, [*(overrides or []), *extra])


def friendly(fn):
    """Turn the library's expected errors (bad input, missing store, ...) into a message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (LandmarkError, FileNotFoundError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None

    return wrapper
