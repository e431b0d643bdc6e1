"""The Deploy issue's bad-input list through the command line (``swdet.cli.main``): exit code != 0
and one stderr line, no traceback; plus ``swdet serve bench`` output and JSON keys."""

from __future__ import annotations

import json

import pytest
from test_serve_helpers import export_onnx, make_artifact, make_toy_onnx, write_coco, write_image

from swdet.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_cli")
    art = make_artifact(root / "run")
    onnx = export_onnx(art, root / "m.onnx")
    fixed = export_onnx(art, root / "fixed2.onnx", batch=2)
    plain = make_toy_onnx(root / "plain.onnx", meta=False)
    data = onnx.read_bytes()
    trunc = root / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 2])
    ann, images = write_coco(root / "coco", n=4)
    bad_dir = root / "bad_images"
    bad_dir.mkdir()
    (bad_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return {"root": root, "art": art, "onnx": onnx, "fixed": fixed, "plain": plain, "trunc": trunc, "ann": ann,
            "images": images, "bad_dir": bad_dir}


def run_fail(capsys, argv: list[str], *needles: str) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, f"expected a failure, got exit 0; stderr: {err}"
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert "Traceback" not in err and lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def test_bad_models_through_every_command(setup, capsys, tmp_path):
    ann, images = setup["ann"], setup["images"]
    img = write_image(tmp_path / "ok.png")
    out = tmp_path / "d.json"
    for model, needle in ((setup["plain"], "not an swdet model (no swdet metadata)"),
                          (setup["trunc"], "not a valid ONNX model")):
        run_fail(capsys, ["serve", "bench", model, "--iters", 1, "--warmup", 0], str(model), needle)
        run_fail(capsys, ["eval", model, "--ann", ann, "--images", images, "--quiet"], str(model), needle)
        run_fail(capsys, ["predict", model, img, "--out", out, "--quiet"], str(model), needle)
    assert not out.exists()


def test_batch_larger_than_fixed_batch(setup, capsys):
    run_fail(capsys, ["serve", "bench", setup["fixed"], "--batch-sizes", "1,4", "--iters", 1],
             "--batch-sizes 4", "max_batch = 2")


def test_images_the_decoder_rejects(setup, capsys, tmp_path):
    bad = setup["bad_dir"]
    run_fail(capsys, ["serve", "bench", setup["onnx"], "--images", bad, "--iters", 1, "--batch-sizes", 1],
             str(bad), "could be decoded")
    run_fail(capsys, ["predict", setup["onnx"], bad / "broken.jpg", "--out", tmp_path / "p.json", "--quiet"],
             "could be read")
    # one bad image among good ones: skipped, counted, reported; the command succeeds
    coco_images = setup["images"]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in sorted(coco_images.iterdir())[:2]:
        (mixed / f.name).write_bytes(f.read_bytes())
    (mixed / "0_broken.jpg").write_bytes((bad / "broken.jpg").read_bytes())
    code = main(["serve", "bench", str(setup["onnx"]), "--images", str(mixed), "--iters", "1", "--warmup", "0",
                 "--batch-sizes", "2"])
    captured = capsys.readouterr()
    assert code == 0 and "1 unreadable images skipped" in captured.err and "Traceback" not in captured.err


def test_eval_skips_an_unreadable_dataset_image(setup, capsys, tmp_path):
    import shutil

    images = tmp_path / "images"
    shutil.copytree(setup["images"], images)
    (images / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code = main(["eval", str(setup["onnx"]), "--ann", str(setup["ann"]), "--images", str(images), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and "unreadable" in err and "Traceback" not in err


def test_bad_cli_values(setup, capsys):
    run_fail(capsys, ["serve", "bench", setup["onnx"], "--batch-sizes", "1,x"], "--batch-sizes 1,x")
    run_fail(capsys, ["serve", "bench", setup["onnx"], "--iters", 0], "--iters 0")
    run_fail(capsys, ["serve", "bench", setup["onnx"], "--cuda-graphs"], "--cuda-graphs")
    run_fail(capsys, ["serve", "bench", setup["onnx"], "--device", "tpu"], "--device tpu")


def test_serve_bench_table_and_json(setup, capsys, tmp_path):
    out = tmp_path / "bench.json"
    code = main(["serve", "bench", str(setup["onnx"]), "--batch-sizes", "1,3", "--iters", "2", "--warmup", "1",
                 "--json", str(out), "--threads", "1"])
    stdout = capsys.readouterr().out
    assert code == 0
    assert "onnxruntime on cpu" in stdout and "img/s" in stdout and "p99" in stdout
    res = json.loads(out.read_text())
    assert res["runtime"] == "onnxruntime" and res["device"] == "cpu" and res["precision"] == "fp32"
    assert [r["batch_size"] for r in res["results"]] == [1, 3]
    for r in res["results"]:
        assert set(r["latency_ms"]) == {"mean", "p50", "p90", "p99"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["throughput_ips"] == pytest.approx(r["batch_size"] * 1000 / r["latency_ms"]["mean"], rel=1e-3)
        for k in ("preprocess_ms", "inference_ms", "postprocess_ms"):
            assert set(r[k]) == {"mean", "p50"} and r[k]["mean"] >= 0
    # the torch runtime through the same command
    code = main(["serve", "bench", str(setup["art"]), "--device", "cpu", "--batch-sizes", "2", "--iters", "1",
                 "--warmup", "0"])
    assert code == 0 and "torch on cpu" in capsys.readouterr().out


def test_serve_help_has_examples(capsys):
    assert main(["serve", "bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples:" in out and "swdet serve bench pisa.onnx --batch-sizes 1,8,32" in out
