"""``swdet calib`` on the command line: the happy path and bad input (one stderr line, non-zero
exit, no traceback; a warning where continuing is sound)."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

IMGSZ = 128


@pytest.fixture(scope="module")
def fp32_onnx(tiny_run, tmp_path_factory):
    from swdet.export import export_onnx

    return export_onnx(tiny_run, tmp_path_factory.mktemp("calib_cli") / "tiny.onnx")


def _run(capsys, args):
    from swdet.cli import main

    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_calib_cli_writes_model_summary_and_json(fp32_onnx, synth_data, tmp_path, capsys):
    out = tmp_path / "tiny.int8.onnx"
    rc, stdout, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(out),
                                    "--num-images", "4", "--method", "minmax", "--quiet",
                                    "--cache", str(tmp_path / "c.npz"), "--json", str(tmp_path / "s.json")])
    assert rc == 0, err
    assert out.is_file() and (tmp_path / "c.npz").is_file()
    assert "swdet calib" in stdout and "minmax" in stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["num_images"] == 4 and summary["method"] == "minmax" and not summary["cache_hit"]
    # ONNX Runtime runs every convolution of the default graph as int8 (swdet.calib.fusion) but
    # the image stem, float by default (--stem float); --stem int8 quantizes it too
    assert summary["ort_convs"]["float"] == 1 and summary["ort_convs"]["int8"] > 0
    assert "ort convs int8/float" in stdout
    from swdet.deploy.onnx_meta import read_onnx_metadata

    cal = read_onnx_metadata(onnx.load(str(out)))["calibration"]
    assert cal["stem"] == "float" and any("stem.0" in n for n in cal["excluded"])
    stem8 = tmp_path / "stem8.int8.onnx"
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(stem8),
                               "--num-images", "4", "--method", "minmax", "--quiet", "--stem", "int8",
                               "--cache", str(tmp_path / "c.npz"), "--json", str(tmp_path / "s8.json")])
    assert rc == 0, err
    s8 = json.loads((tmp_path / "s8.json").read_text())
    assert s8["cache_hit"] and s8["ort_convs"]["float"] == 0
    assert s8["ort_convs"]["int8"] == summary["ort_convs"]["int8"] + 1
    assert read_onnx_metadata(onnx.load(str(stem8)))["calibration"]["stem"] == "int8"
    # the int8 model goes through the other stages: eval's runtime, export's TensorRT check
    rc, stdout, err = _run(capsys, ["eval", str(out), "--ann", str(synth_data / "annotations" / "instances_val.json"),
                                    "--images", str(synth_data / "val"), "--quiet", "--device", "cpu"])
    assert rc == 0, err
    rc, stdout, err = _run(capsys, ["export", str(out), "--check-only"])
    assert rc == 0, err


def test_calib_cli_flavours(fp32_onnx, synth_data, tmp_path, capsys):
    """--head-outputs float --no-rewrite: the graph before the int8 rewrites, recorded in the
    metadata; a bad --head-outputs is one usage line."""
    from swdet.deploy.onnx_meta import read_onnx_metadata

    out = tmp_path / "legacy.int8.onnx"
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(out),
                               "--num-images", "2", "--method", "minmax", "--quiet", "--cache", str(tmp_path / "c.npz"),
                               "--head-outputs", "float", "--no-rewrite"])
    assert rc == 0, err
    cal = read_onnx_metadata(onnx.load(str(out)))["calibration"]
    assert cal["head_outputs"] == "float" and cal["rewrite"] is None and cal["float_output_convs"]
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(out),
                               "--head-outputs", "int4"])
    assert rc == 2 and "Traceback" not in err and "--head-outputs" in err
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(out),
                               "--stem", "int4"])
    assert rc == 2 and "Traceback" not in err and "--stem" in err


def test_folder_without_images(fp32_onnx, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(tmp_path / "imgs"),
                               "--out", str(tmp_path / "o.onnx"), "--quiet"])
    assert rc != 0
    assert "no images found" in _one_error_line(err)
    assert not (tmp_path / "o.onnx").exists()


def test_folder_with_no_readable_images(fp32_onnx, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"not a jpeg")
    (d / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(d), "--out", str(tmp_path / "o.onnx"),
                               "--quiet", "--cache", str(tmp_path / "c.npz")])
    assert rc != 0
    line = _one_error_line(err)
    assert "could be decoded" in line and str(d) in line


def test_fewer_images_than_requested_warns_and_continues(fp32_onnx, synth_data, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    for f in sorted((synth_data / "val").glob("*.jpg"))[:3]:
        shutil.copy(f, d / f.name)
    (d / "broken.jpg").write_bytes(b"garbage")
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(d), "--out", str(tmp_path / "o.onnx"),
                               "--num-images", "10", "--method", "minmax", "--quiet",
                               "--cache", str(tmp_path / "c.npz")])
    assert rc == 0, err
    assert "Traceback" not in err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any("fewer than --num-images 10" in w and "calibrating with 3" in w for w in warnings)
    assert any("unreadable" in w for w in warnings)
    from swdet.export import read_onnx_metadata

    assert read_onnx_metadata(tmp_path / "o.onnx")["calibration"]["num_images"] == 3


def test_already_quantized_model(fp32_onnx, synth_data, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"), "--out", str(out),
                               "--num-images", "2", "--method", "minmax", "--quiet", "--cache", str(tmp_path / "c.npz")])
    assert rc == 0, err
    rc, _, err = _run(capsys, ["calib", str(out), "--images", str(synth_data / "val"),
                               "--out", str(tmp_path / "qq.onnx"), "--quiet"])
    assert rc != 0
    assert "already quantized" in _one_error_line(err)


def test_non_swdet_onnx(synth_data, tmp_path, capsys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "plain.onnx"
    onnx.save(model, str(path))
    rc, _, err = _run(capsys, ["calib", str(path), "--images", str(synth_data / "val"),
                               "--out", str(tmp_path / "o.onnx"), "--quiet"])
    assert rc != 0
    assert "not an swdet model" in _one_error_line(err)


def test_not_an_onnx_file(synth_data, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\x01garbage that is not protobuf" * 10)
    rc, _, err = _run(capsys, ["calib", str(path), "--images", str(synth_data / "val"),
                               "--out", str(tmp_path / "o.onnx"), "--quiet"])
    assert rc != 0
    assert "ONNX" in _one_error_line(err)


@pytest.mark.parametrize("extra, needle", [
    (["--exclude", "no_such_layer"], "matches no quantizable layer"),
    (["--num-images", "0"], "--num-images"),
    (["--method", "percentile", "--percentile", "150"], "--percentile"),
])
def test_bad_options(fp32_onnx, synth_data, tmp_path, capsys, extra, needle):
    rc, _, err = _run(capsys, ["calib", str(fp32_onnx), "--images", str(synth_data / "val"),
                               "--out", str(tmp_path / "o.onnx"), "--quiet", "--cache", str(tmp_path / "c.npz"),
                               *extra])
    assert rc != 0
    assert needle in _one_error_line(err)
