"""benchmarks/_results.py: every benchmark's ``--out`` is a stem; a dot in it stays."""

from __future__ import annotations

import json

from conftest import load_benchmark

R = load_benchmark("_results")


def test_a_dot_in_the_stem_stays_and_a_given_suffix_is_not_doubled(tmp_path):
    assert R.result_paths(tmp_path / "int8_head_bn_lr0.004") == (tmp_path / "int8_head_bn_lr0.004.json",
                                                               tmp_path / "int8_head_bn_lr0.004.md")
    assert R.result_paths(tmp_path / "roofline.json") == (tmp_path / "roofline.json", tmp_path / "roofline.md")


def test_both_files_are_written_in_a_new_folder(tmp_path, capsys):
    out = tmp_path / "new" / "x_lr0.5"
    j, m = R.write_results(out, {"a": 1, "p": tmp_path}, "| a |\n", quiet=True)
    assert json.loads(j.read_text()) == {"a": 1, "p": str(tmp_path)}
    assert m.read_text() == "| a |\n"
    assert capsys.readouterr().out == ""
    R.write_results(out, {}, "plain table", fenced=True)
    assert m.read_text() == "```\nplain table\n```\n"
    assert str(j) in capsys.readouterr().out
