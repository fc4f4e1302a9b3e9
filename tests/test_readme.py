"""The README's commands run as written, and the user guide's name options that exist.

Every ``landmark ...`` line of the README's and the guide's shell blocks is parsed by the command line itself
(options, arguments, their types) and its ``--preset`` / ``--set`` are loaded as the command would load them,
so a renamed option, command, preset or configuration key fails here. ``make`` targets, ``pip`` extras and
benchmark scripts must exist. The slow test runs the README's quick start and Python example for real, on a
few photos copied into a temporary home folder.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from markdown_it import MarkdownIt

from landmark.cli import app
from landmark.config import load_config
from landmark.service import load_settings
from landmark.training import load_train_config
from landmark.training.config import load_delf_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
GUIDE = sorted((REPO / "docs").glob("*.md"))
SHELLS = ("bash", "sh", "shell")
README_PROGRAMS = {"landmark", "make", "pip"}  # what a user runs from the README
GUIDE_PROGRAMS = README_PROGRAMS | {"python", "torchrun", "curl", "kubectl", "ray"}


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the fence
    section: str  # the heading above it
    lang: str
    code: str


def code_blocks(text: str, name: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, each with the heading it sits under."""
    tokens = MarkdownIt("commonmark").parse(text)
    section, out = "", []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            section = tokens[i + 1].content
        elif tok.type == "fence" and tok.map is not None:
            out.append(Block(f"{name}:{tok.map[0] + 1}", section, tok.info.split()[0] if tok.info else "", tok.content))
    return out


def shell_lines(block: Block) -> list[tuple[str, list[str], str]]:
    """``(where, argv, line)`` of each command of a shell block: continuations joined, comments and ``VAR=value``
    prefixes dropped from argv (the shell would expand ``~`` and globs; parsing takes them as written)."""
    out, pending, first = [], "", 0
    for n, line in enumerate(block.code.splitlines()):
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        raw, pending = pending + line, ""
        argv = shlex.split(raw, comments=True)
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            argv = argv[1:]
        if argv:
            file, line_no = block.where.rsplit(":", 1)
            out.append((f"{file}:{int(line_no) + 1 + first}", argv, raw))
    return out


def landmark_args(argv: list[str]) -> list[str] | None:
    """The arguments given to ``landmark`` (also through ``torchrun -m landmark.cli``), else None."""
    if argv[0] == "landmark":
        return argv[1:]
    if argv[0] == "torchrun" and "landmark.cli" in argv:
        return argv[argv.index("landmark.cli") + 1 :]
    if argv[0] == "kubectl" and "--" in argv:  # kubectl exec POD -- landmark ...
        return landmark_args(argv[argv.index("--") + 1 :])
    if argv[0] == "ray" and argv[1] == "exec":  # ray exec cluster.yaml "landmark ..."
        return landmark_args(shlex.split(argv[-1]))
    return None


def check_landmark(args: list[str]) -> list[str]:
    """Parse ``landmark ARGS`` as the CLI would (every option, argument and type; click raises otherwise),
    then load its ``--preset`` and ``--set`` as the command does (a ConfigError names a wrong key).
    Returns the command path, e.g. ``["index", "build"]``."""
    command = typer.main.get_command(app)
    ctx = command.make_context("landmark", [], resilient_parsing=True)
    path, rest = [], list(args)
    while hasattr(command, "get_command"):  # a group: the next word names its subcommand
        assert rest, f"landmark {' '.join(path)}: no command given"
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"landmark {' '.join(path)}: no command {rest[0]!r}"
        path.append(rest.pop(0))
        command = sub
        ctx = command.make_context(path[-1], [], parent=ctx, resilient_parsing=True)
    params = command.make_context(path[-1], rest, parent=ctx.parent).params
    preset, sets = params.get("preset"), list(params.get("set_") or [])
    if path == ["train"]:
        load_train_config(preset, None, sets)
    elif path == ["train-delf"]:
        load_delf_config(preset, None, sets)
    elif path == ["serve"]:
        load_settings(sets)
    elif "preset" in params or "set_" in params:
        load_config(preset, None, sets)
    return path


def config_reference() -> str:
    """The generated configuration reference (docs/hooks/reference.py), whose example is checked too."""
    spec = importlib.util.spec_from_file_location("docs_reference", REPO / "docs" / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.configuration_page()


def commands(paths: list[Path], generated: bool = False) -> list[tuple[str, list[str]]]:
    texts = [(p.read_text(), p.relative_to(REPO).as_posix()) for p in paths]
    if generated:
        texts.append((config_reference(), "reference/configuration.md (generated)"))
    return [
        (where, argv)
        for text, name in texts
        for b in code_blocks(text, name)
        if b.lang in SHELLS
        for where, argv, _ in shell_lines(b)
    ]


README_COMMANDS = commands([README])
GUIDE_COMMANDS = commands(GUIDE, generated=True)
LANDMARK_COMMANDS = [(w, a) for w, argv in README_COMMANDS + GUIDE_COMMANDS if (a := landmark_args(argv)) is not None]


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: the detail belongs in docs/"
    for path in [README, *GUIDE, REPO / "CHANGELOG.md"]:
        long = [i for i, line in enumerate(path.read_text().splitlines(), 1) if len(line) > 120]
        assert not long, f"{path.name}: lines {long} are longer than 120 characters"
    assert len(README_COMMANDS) >= 15 and len(LANDMARK_COMMANDS) >= 60  # the extraction found the blocks


@pytest.mark.parametrize("where,args", LANDMARK_COMMANDS, ids=[w for w, _ in LANDMARK_COMMANDS])
def test_landmark_command_parses(where, args):
    check_landmark(args)


@pytest.mark.parametrize(
    "args",
    [
        ["search", "photo.jpg", "--stor", "runs/trips"],  # a renamed option
        ["search", "photo.jpg", "--store", "runs/trips", "-k", "five"],  # a badly typed value
        ["index", "biuld", "DATA", "--store", "runs/trips"],  # a renamed command
        ["recognize", "--store", "runs/trips"],  # a missing argument
        ["index", "build", "DATA", "--store", "s", "--set", "extract.image_sise=512"],  # a wrong key
        ["index", "build", "DATA", "--store", "s", "--preset", "lite9-gem"],  # a preset that does not exist
        ["train", "DATA", "--set", "optim.epoch=5"],  # a wrong training key
        ["serve", "--store", "s", "--set", "max_upload=1"],  # a wrong service setting
    ],
)
def test_a_wrong_command_fails_the_check(args):
    with pytest.raises(Exception):  # noqa: B017 - click's UsageError / BadParameter or a ConfigError
        check_landmark(args)


def test_other_commands_name_what_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = {line.split(":", 1)[0] for line in makefile.splitlines() if line and line[0].isalpha() and ":" in line}
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    checked = 0
    for where, argv in [(w, a) for w, a in README_COMMANDS if a[0] != "landmark"] + [
        (w, a) for w, a in GUIDE_COMMANDS if a[0] not in ("landmark", "torchrun")
    ]:
        allowed = README_PROGRAMS if where.startswith("README") else GUIDE_PROGRAMS
        assert argv[0] in allowed, f"{where}: {argv[0]} is not a command this test knows how to check"
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, f"{where}: no make target {set(argv[1:]) - targets}"
        elif argv[0] == "pip":
            for arg in argv:
                if "[" in arg:
                    named = set(arg.split("[", 1)[1].rstrip("]").split(","))
                    assert named <= extras, f"{where}: no extra {named - extras} in pyproject.toml"
        elif argv[0] == "python":
            script = next(a for a in argv[1:] if not a.startswith("-"))
            assert (REPO / script).is_file(), f"{where}: no script {script}"
        checked += 1
    assert checked >= 10


# -- the quick start and the Python example, run ---------------------------------------------------------------

TRIPS = {"eiffel_tower": 47378, "golden_gate": 168098, "sacre_coeur": 900005}  # gldv2-mini train landmarks
PER_LANDMARK = 5


def readme_section(name: str) -> list[Block]:
    blocks = [b for b in code_blocks(README.read_text(), "README.md") if b.section.startswith(name)]
    assert blocks, f"README.md has no code under a heading '{name}...'"
    return blocks


@pytest.mark.slow
def test_quick_start_and_python_api_run_as_written(gldv2_root, tmp_path, monkeypatch):
    """The README's quick start on a home folder of 15 photos of 3 landmarks (copied from gldv2-mini), then its
    Python example in the same working directory: every command exits 0 and answers with those landmarks."""
    home, work = tmp_path / "home", tmp_path / "work"
    rows = [line.split(",") for line in (gldv2_root / "train.csv").read_text().splitlines()[1:]]
    for folder, label in TRIPS.items():
        ids = [r[0] for r in rows if r[2] == str(label)]
        for i, image_id in enumerate(ids[: PER_LANDMARK + 2]):
            src = gldv2_root / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
            if i < PER_LANDMARK:
                dest = home / "Pictures" / "trips" / folder / f"{image_id}.jpg"
            elif folder == "eiffel_tower":  # photos the README's examples name, not in the store
                dest = work / ("photo.jpg" if i == PER_LANDMARK else "new.jpg")
            else:
                dest = home / "Pictures" / "new" / f"IMG_{len(ids)}.jpg"  # names that say nothing
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "200",
    }

    ran = []
    for block in readme_section("Quick start"):
        if block.lang not in SHELLS:
            continue
        for where, argv, line in shell_lines(block):
            assert argv[0] == "landmark", f"{where}: the quick start runs landmark commands only"
            if argv[1] == "serve":  # runs until stopped: parsed only (tests/service serve the same app)
                check_landmark(argv[1:])
                continue
            done = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{where}: {line}\n{done.stdout}\n{done.stderr}"
            ran.append((argv[1], done.stdout))
    assert [cmd for cmd, _ in ran] == ["index", "recognize", "search"]
    assert (work / "runs" / "trips" / "meta.sqlite").is_file()
    recognized, searched = ran[1][1], ran[2][1]
    assert sum(folder in recognized for folder in TRIPS) >= 2, recognized  # the new photos' landmarks
    assert any(folder in searched for folder in TRIPS), searched

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (python,) = [b for b in readme_section("Python API") if b.lang == "python"]
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(python.code, python.where, "exec"), namespace)  # noqa: S102 - the README's own example
    assert namespace["rec"].error is None and namespace["rec"].name == "eiffel_tower"
    assert namespace["lm"].store.root.name == "trips-512" and sum(namespace["report"].added.values()) == 15
    assert (work / "runs" / "trips-512" / "whitening.npz").is_file()  # lite2-gem-pcaw: PCA even from few photos
