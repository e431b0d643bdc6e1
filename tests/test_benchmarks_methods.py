"""benchmarks/methods.py: a run of another method set never replaces the campaign's table."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_table_stem_keeps_the_campaign_table(tmp_path, capsys):
    methods = load_benchmark("methods")
    assert methods.table_stem(tmp_path, "retinanet", ["focal", "pisa"]) == "methods_retinanet"  # no table yet
    (tmp_path / "methods_retinanet.json").write_text(json.dumps({"rows": [{"method": "focal"}, {"method": "pisa"}]}))
    assert methods.table_stem(tmp_path, "retinanet", ["focal", "pisa"]) == "methods_retinanet"  # same set: update
    other = methods.table_stem(tmp_path, "retinanet", ["ghm@train.iters=3900", "focal@train.iters=3900"])
    assert other.startswith("methods_retinanet__") and len(other) == len("methods_retinanet__") + 8
    assert "holds another method set" in capsys.readouterr().err
    assert other == methods.table_stem(tmp_path, "retinanet", ["ghm@train.iters=3900", "focal@train.iters=3900"])


def test_load_records_finds_a_spec_with_brackets(tmp_path):
    """A spec holding `[...]` (a list override) is a glob character class unless escaped: its
    records were silently not found and the table came out empty."""
    import argparse

    methods = load_benchmark("methods")
    args = argparse.Namespace(arch="faster_rcnn", data=tmp_path / "data", iters=20, sets=[], records=tmp_path)
    spec = "sampling_free@methods.sampling_free.heads=[rpn]"
    rec = {**methods.settings(args, spec), "seed": 0, "AP": 0.25}
    (tmp_path / f"{methods.slug(spec)}__seed0.json").write_text(json.dumps(rec))
    other = {**rec, "config_hash": "not-this-recipe"}
    (tmp_path / f"{methods.slug(spec)}__seed1.json").write_text(json.dumps(other))
    found = methods.load_records(args, spec)
    assert [r["seed"] for r in found] == [0]  # the matching record, and only it


def test_a_table_holds_only_its_seeds(tmp_path):
    """Records of seeds 0-5 and a table over seeds 3,4,5: the rows are those three seeds (the
    title names them), not every seed recorded."""
    import argparse

    methods = load_benchmark("methods")
    args = argparse.Namespace(arch="retinanet", data=tmp_path / "data", iters=20, sets=[], records=tmp_path)
    for seed in range(6):
        rec = {**methods.settings(args, "focal"), "seed": seed, "AP": 0.4}
        (tmp_path / f"focal__seed{seed}.json").write_text(json.dumps(rec))
    assert [r["seed"] for r in methods.load_records(args, "focal", [3, 4, 5])] == [3, 4, 5]
    assert len(methods.load_records(args, "focal")) == 6


def test_the_committed_tables_still_find_their_records():
    """Every row of every committed methods table is rebuilt from records the
    current code still matches: a config entry added later (at its default) must not change the
    recipe hash, or `--table-only` comes out empty and a later session re-runs every training."""
    import argparse
    import re
    from pathlib import Path

    methods = load_benchmark("methods")
    results = Path(methods.ROOT) / "benchmarks" / "results"
    tables = sorted(results.glob("methods_*.json"))
    assert len(tables) >= 2
    for path in tables:
        name, table = path.stem, json.loads(path.read_text())
        arch = "faster_rcnn" if "faster_rcnn" in name else "retinanet"
        args = argparse.Namespace(arch=arch, data=Path("data/synth"), iters=0, sets=list(table["sets"]),
                                  records=Path(methods.ROOT) / table["records"])
        given = re.search(r"--iters (\d+)", table["command"])  # the table's --iters, if it named one
        args.iters = int(given.group(1)) if given else 0
        for row in table["rows"]:
            found = methods.load_records(args, row["method"], table["seeds"])
            assert len(found) == row["seeds"], (name, row["method"], len(found))


def test_paired_ratio_is_the_t_interval_of_the_per_seed_quotients():
    """GHM-C's "at least 0.8x focal" rests on this column: hand-computed quotients 0.8, 0.9, 1.0
    (mean 0.9, sd 0.1, t_{0.975,2} = 4.303): 0.9 ± 4.303 · 0.1 / √3 = [0.652, 1.148]."""
    methods = load_benchmark("methods")
    ghm, focal = {0: 0.4, 1: 0.45, 2: 0.6, 3: 0.3}, {0: 0.5, 1: 0.5, 2: 0.6}  # seed 3: no pair
    d = methods.paired(ghm, focal, ratio=True)
    assert d["n"] == 3 and abs(d["mean"] - 0.9) < 1e-12
    assert abs(d["lo"] - 0.6516) < 1e-3 and abs(d["hi"] - 1.1484) < 1e-3
    assert methods._ratio(d) == "0.90x [0.65, 1.15]"
    assert methods._ratio(methods.paired({0: 0.3}, {0: 0.6}, ratio=True)) == "0.50x"  # one seed: no interval
    assert abs(methods.paired(ghm, focal)["mean"] + 0.05) < 1e-12  # the difference: -0.1, -0.05, 0
