"""One base for the errors the library raises on purpose, and the CLI's handling of every one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import typer

import landmark
from landmark.cli.app import friendly
from landmark.errors import LandmarkError
from landmark.index.faiss_index import AnnError
from landmark.recognition.filters import FilterConfigError


def package_errors() -> list[type]:
    found = []
    for mod in pkgutil.walk_packages(landmark.__path__, "landmark."):
        if mod.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        try:
            module = importlib.import_module(mod.name)
        except ImportError:  # an optional extra (ray) that is not installed
            continue
        found += [
            c
            for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Exception) and c.__module__ == module.__name__
        ]
    return found


def test_every_error_of_the_package_is_a_landmark_error():
    errors = package_errors()
    assert len(errors) >= 14
    assert [e.__name__ for e in errors if not issubclass(e, LandmarkError)] == []
    assert issubclass(AnnError, ValueError)  # and still what it extended before


@pytest.mark.parametrize("error", [AnnError("no such index"), FilterConfigError("bad roles")])
def test_the_cli_prints_any_of_them_and_exits_2(error, capsys):
    @friendly
    def command():
        raise error

    with pytest.raises(typer.Exit) as exit_:
        command()
    assert exit_.value.exit_code == 2
    assert str(error) in capsys.readouterr().err
