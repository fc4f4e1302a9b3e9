"""``landmark``: the command line. Thin: it parses arguments and calls the library.

Each command module imports the library inside its commands, so that ``landmark --help`` and a
mistyped option answer at once instead of after loading torch. The commands are registered here,
in the order ``--help`` lists them.
"""

from __future__ import annotations

import logging

from . import evaluate, index, query, tools
from .app import app, index_app

for name, command in [
    ("build", index.index_build),
    ("add", index.index_add),
    ("import", index.index_import),
    ("remove", index.index_remove),
    ("expand", index.index_expand),
    ("info", index.index_info),
]:
    index_app.command(name)(command)
for name, command in [
    ("search", query.search),
    ("recognize", query.recognize),
    ("evaluate", evaluate.evaluate),
    ("evaluate-revisited", evaluate.evaluate_revisited_cmd),
    ("calibrate", evaluate.calibrate_cmd),
    ("cluster", evaluate.cluster_cmd),
    ("train", tools.train_cmd),
    ("train-delf", tools.train_delf_cmd),
    ("export", tools.export),
    ("download", tools.download),
    ("install-detector", tools.install_detector),
    ("models", tools.models),
    ("serve", tools.serve),
]:
    app.command(name)(command)

__all__ = ["app", "main"]


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
