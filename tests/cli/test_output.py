"""What search, recognize and index add print: progress on stderr only, whole ids when stdout is not a
terminal, CSV and JSON on stdout when asked (issue #29: ids cut by the table could not be pasted)."""

from __future__ import annotations

import csv
import io
import json

from stand_ins import LONG_IDS, noise_photos


def rows(text: str, delimiter: str = ",") -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def test_search_piped_prints_whole_ids_that_index_remove_takes(cli, store, photos):
    query = photos / f"{LONG_IDS[0]}.png"
    result = cli("search", query, "--store", store, "-k", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    got = rows(result.stdout, "\t")  # not a terminal: tab-separated, header first
    assert list(got[0]) == ["query", "rank", "id", "score", "inliers", "landmark_id", "landmark", "path"]
    assert [r["rank"] for r in got] == ["1", "2", "3"] and {r["query"] for r in got} == {str(query)}
    assert got[0]["id"] == f"{LONG_IDS[0]}.png" and got[0]["landmark"] == "Seven" and got[0]["landmark_id"] == "7"
    assert all(r["id"][:-4] in LONG_IDS for r in got)  # every id whole
    removed = cli("index", "remove", got[1]["id"], "--store", store)
    assert removed.exit_code == 0 and "removed 1 of 1" in removed.stdout


def test_search_csv_and_json(cli, store, photos):
    queries = [photos / f"{i}.png" for i in LONG_IDS[:2]]
    as_csv = cli("search", *queries, "--store", store, "-k", "2", "--csv", "--no-progress")
    assert as_csv.exit_code == 0, as_csv.output
    got = rows(as_csv.stdout)
    assert [(r["query"], r["rank"]) for r in got] == [(str(q), str(n)) for q in queries for n in (1, 2)]
    assert [got[0]["id"], got[2]["id"]] == [q.name for q in queries]
    as_json = json.loads(cli("search", *queries, "--store", store, "-k", "2", "--json", "--no-progress").stdout)
    assert [[m["id"] for m in r["matches"]] for r in as_json] == [
        [r["id"] for r in got if r["query"] == str(q)] for q in queries
    ]
    both = cli("search", *queries, "--store", store, "--json", "--csv")
    assert both.exit_code == 2 and "not both" in both.stderr


def test_search_progress_is_on_stderr_only(cli, store, tmp_path):
    queries = noise_photos(tmp_path / "queries", [f"q{i}.png" for i in range(20)], seed=1)  # two steps of 16
    shown = cli("search", *queries, "--store", store, "-k", "1", "--json", "--progress")
    assert shown.exit_code == 0, shown.output
    assert "search" in shown.stderr and "20/20" in shown.stderr
    assert len(json.loads(shown.stdout)) == 20  # stdout is the JSON alone
    quiet = cli("search", *queries, "--store", store, "-k", "1", "--json", "--no-progress")
    assert "20/20" not in quiet.stderr and json.loads(quiet.stdout) == json.loads(shown.stdout)
    default = cli("search", *queries, "--store", store, "-k", "1", "--json")  # stderr is not a terminal here
    assert "20/20" not in default.stderr
    assert "20/20" in cli("search", *queries, "--store", store, "-k", "1", LANDMARK_PROGRESS="1").stderr


def test_recognize_csv_to_stdout_and_the_kaggle_file(cli, store, photos, tmp_path):
    query = photos / f"{LONG_IDS[1]}.png"
    result = cli("recognize", query, "--store", store, "--csv", "--kaggle-csv", tmp_path / "sub.csv", "--progress")
    assert result.exit_code == 0, result.output
    (row,) = rows(result.stdout)
    assert row["photo"] == LONG_IDS[1] and row["path"] == str(query)  # a file's id: its name's stem
    assert row["landmark_id"] == "7" and row["landmark"] == "Seven"
    assert 0 < float(row["score"]) <= 1 and row["grade"] and int(row["votes"]) >= 1
    assert "verify neighbours" in result.stderr and "1/1" in result.stderr  # progress bars on stderr
    assert (tmp_path / "sub.csv").read_text().splitlines()[0] == "id,landmarks"
    piped = cli("recognize", query, "--store", store)  # not a terminal: the same columns, tab-separated
    assert rows(piped.stdout, "\t") == [row]
    old = cli("recognize", query, "--store", store, "--csv", tmp_path / "sub.csv")  # what --csv PATH meant before
    assert old.exit_code == 2 and "--kaggle-csv" in old.stderr


def test_index_add_lists_each_photo_with_its_id(cli, store, photos, tmp_path):
    new = noise_photos(tmp_path / "more", ["fresh.png"], seed=2)[0]
    clash = noise_photos(tmp_path / "other", [f"{LONG_IDS[2]}.png"], seed=3)[0]  # a stored id, other content
    (tmp_path / "other" / "broken.png").write_bytes(b"")
    args = ("index", "add", new, tmp_path / "other", "--store", store, "--no-progress")
    result = cli(*args, "--csv")
    assert result.exit_code == 0, result.output
    got = rows(result.stdout)
    assert [r["path"] for r in got] == [str(new), str(clash), str(tmp_path / "other" / "broken.png")]
    assert (got[0]["id"], got[0]["status"]) == ("fresh", "added")  # a file's id: its name's stem
    assert got[1]["status"] == "added" and got[1]["id"].startswith(f"{LONG_IDS[2]}.png~")
    assert "is taken by" in got[1]["note"]
    assert got[2]["status"] == "unreadable" and "empty file" in got[2]["note"]
    again = json.loads(cli(*args, "--json").stdout)
    assert (again["added"], again["present"], again["filled"], again["unreadable"]) == (0, 2, 0, 1)
    assert again["store_images"] == 8 and [p["id"] for p in again["photos"]] == [r["id"] for r in got]
    stored = rows(cli("index", "add", photos, "--store", store, "--csv").stdout)
    assert [(r["id"], r["status"]) for r in stored] == [(f"{i}.png", "present") for i in LONG_IDS]
