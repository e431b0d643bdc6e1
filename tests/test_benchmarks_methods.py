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
