"""MkDocs hook: the reference pages generated from the code at build time, so they never drift from it.

- ``reference/configuration.md``: every typed dataclass config (``landmark/<stage>/config.py``, composed by
  ``landmark.config.Config``; training, DELF training and the service settings beside it) as tables of
  key, type, default and the comment its source gives the field, plus the named presets;
- ``reference/cli.md``: every ``landmark`` command with its arguments and options (typer's own renderer).

``mkdocs build`` imports the project from ``src/`` (``PYTHONPATH`` not needed).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "src", Path(__file__).resolve().parent):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from griffe_roles import field_comment  # noqa: E402 - the folder above is on the path now

CONFIG_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"


# -- comments of dataclass fields ------------------------------------------------------------------


def field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` of a dataclass, read from its source: the comment on the field's lines, and the
    comment-only lines right below it (its continuation), joined into one sentence (as the API reference reads
    them: ``griffe_roles.field_comment``)."""
    path = inspect.getsourcefile(cls)
    assert path is not None
    source = Path(path).read_text()
    node = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    lines = source.splitlines()
    return {
        stmt.target.id: field_comment(lines, stmt.lineno, stmt.end_lineno or stmt.lineno)
        for stmt in node.body
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
    }


def annotations_of(cls: type) -> dict[str, str]:
    """The fields' annotations as written in the source (``from __future__ import annotations``)."""
    return {
        f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        for f in dataclasses.fields(cls)
    }


def shown(value: Any) -> str:
    """A default as it would be written in YAML or ``--set`` (tuples as lists, None as null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return "(section)"
    if isinstance(value, tuple):
        value = list(value)
    try:
        text = json.dumps(value)
    except TypeError:
        text = repr(value)
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(instance: Any, prefix: str) -> list[str]:
    """The fields of one config section: dotted key, type, default (of ``instance``), comment."""
    cls = type(instance)
    notes, types = field_comments(cls), annotations_of(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.metadata.get("saved") is False:
            continue
        value = getattr(instance, f.name)
        rows.append(
            f"| `{prefix}{f.name}` | `{cell(types[f.name])}` | {cell(shown(value))} | {cell(notes.get(f.name, ''))} |"
        )
    return rows


def section(title: str, instance: Any, prefix: str, level: int = 3) -> list[str]:
    cls = type(instance)
    lines = [f"{'#' * level} {title}", "", f"`{cls.__module__}.{cls.__qualname__}`", ""]
    doc = inspect.getdoc(cls) or ""
    if doc and not doc.startswith(f"{cls.__name__}("):  # dataclasses invent a signature when undocumented
        lines += [doc, ""]
    lines += [*table(instance, prefix), ""]
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines += section(f"`{prefix}{f.name}`", value, f"{prefix}{f.name}.", level + 1)
    return lines


def flat(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """A preset's nested overrides as the ``key=value`` strings ``--set`` takes."""
    out: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            out += flat(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value if isinstance(value, str) else json.dumps(value)}")
    return out


def presets_table(presets: dict[str, dict[str, Any]], default: str) -> list[str]:
    rows = ["| preset | what it sets over the defaults |", "|---|---|"]
    for name, overrides in presets.items():
        label = f"`{name}`" + (" (default)" if name == default else "")
        sets = "<br>".join(f"`{cell(s)}`" for s in flat(overrides)) or "-"
        rows.append(f"| {label} | {sets} |")
    return rows


def configuration_page() -> str:
    from landmark.config import DEFAULT_PRESET, PRESETS, Config
    from landmark.service.settings import ServiceSettings
    from landmark.training.config import DELF_PRESETS, TRAIN_PRESETS, DelfTrainConfig, TrainConfig

    config = Config()
    lines = [
        "# Configuration reference",
        "",
        "Generated from the typed dataclasses at build time: each key with its type, its default and the",
        "comment the source gives it. A configuration is built as *preset <- YAML file <- overrides*:",
        "",
        "```bash",
        "landmark index build DATA --store runs/store --preset lite2-gem-pcaw --config my.yaml \\",
        "    --set extract.image_size=512 --set 'extract.scales=[0.7071, 1, 1.4142]'",
        "```",
        "",
        "`my.yaml` holds the same keys nested (`extract: {image_size: 512}`). Unknown keys and badly typed",
        "values are errors that name the key, before any work is done. A store keeps the configuration it",
        "was built with (`STORE/config.yaml`), and `landmark search`, `recognize` and `serve` use it.",
        "",
        "## Presets",
        "",
        "`landmark models` lists them too; `--preset NAME` on every command that builds something.",
        "",
        *presets_table(PRESETS, DEFAULT_PRESET),
        "",
        "## Store configuration (`landmark.config.Config`)",
        "",
        "What `landmark index build`, `index import`, `evaluate` and `Landmarks.build` read. `ensemble` is a",
        "list of `model` sections: more networks whose descriptors are concatenated after `model`'s",
        "(`--set 'ensemble=[{backbone: tf_efficientnet_lite1}]'`).",
        "",
    ]
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            lines += section(f"`{f.name}`", value, f"{f.name}.")
    lines += [
        "## Training (`landmark train`)",
        "",
        "`landmark train DATA --preset NAME --set optim.epochs=5`; the default preset is `cpu-mini`.",
        "",
        *presets_table(TRAIN_PRESETS, "cpu-mini"),
        "",
        *section("Top-level keys", TrainConfig(), ""),
        "## DELF training (`landmark train-delf`)",
        "",
        *presets_table(DELF_PRESETS, "cpu-mini"),
        "",
        *section("Keys", DelfTrainConfig(), ""),
        "## Service settings (`landmark serve --set KEY=VALUE`)",
        "",
        *section("Keys", ServiceSettings(), ""),
    ]
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    import typer
    import typer.cli
    import typer.main

    from landmark.cli import app

    command = typer.main.get_command(app)
    body = typer.cli.get_docs_for_click(obj=command, ctx=typer.Context(command), name="landmark", title="CLI reference")
    intro = (
        "Generated from the command line itself at build time (`landmark COMMAND --help` says the same).\n"
        "Commands that build something take `--preset`, `--config FILE.yaml` and repeated `--set key=value`\n"
        "(see the [configuration reference](configuration.md)).\n"
    )
    head, _, rest = body.partition("\n")
    return f"{head}\n\n{intro}{rest}"


# -- the hook --------------------------------------------------------------------------------------


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    importlib.invalidate_caches()
    for uri, make in ((CONFIG_PAGE, configuration_page), (CLI_PAGE, cli_page)):
        stub = files.get_file_from_path(uri)  # the checked-in stub that points GitHub readers here
        if stub is not None:
            files.remove(stub)
        files.append(File.generated(config, uri, content=make()))
    return files
