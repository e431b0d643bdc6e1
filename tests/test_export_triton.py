"""Triton model repositories: layout, config.pbtxt parsed against (a subset of) Triton's
ModelConfig proto, batching rules for dynamic and fixed-batch models and engines."""

from __future__ import annotations

import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf import message_factory

import swdet.config
from swdet.artifact import build_metadata, save_artifact
from swdet.config import PostprocessConfig
from swdet.deploy.engine_meta import engine_sidecar, write_engine_sidecar
from swdet.errors import SwdetError
from swdet.export import export_onnx, write_triton_repository
from swdet.export.tensorrt_build import resolve_profile
from swdet.models import build_model

IMGSZ = 128


def _model_config_class():
    """The fields of Triton's model_config.proto (triton-inference-server/common) we write."""
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="swdet_test_model_config.proto", package="inference",
                                             syntax="proto3")
    dt = fdp.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                           "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32",
                           "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dt.value.add(name=n, number=i)

    def msg(name, fields):
        m = fdp.message_type.add(name=name)
        for num, (fname, ftype, label, tname) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                f.type_name = tname
        return m

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("ModelInput", [("name", F.TYPE_STRING, opt, ""), ("data_type", F.TYPE_ENUM, opt, ".inference.DataType"),
                       ("dims", F.TYPE_INT64, rep, "")])
    msg("ModelOutput", [("name", F.TYPE_STRING, opt, ""), ("data_type", F.TYPE_ENUM, opt, ".inference.DataType"),
                        ("dims", F.TYPE_INT64, rep, "")])
    msg("ModelDynamicBatching", [("preferred_batch_size", F.TYPE_INT32, rep, ""),
                                 ("max_queue_delay_microseconds", F.TYPE_UINT64, opt, "")])
    group = msg("ModelInstanceGroup", [("count", F.TYPE_INT32, opt, ""),
                                       ("kind", F.TYPE_ENUM, opt, ".inference.ModelInstanceGroup.Kind")])
    kind = group.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    msg("ModelConfig", [("name", F.TYPE_STRING, opt, ""), ("platform", F.TYPE_STRING, opt, ""),
                        ("max_batch_size", F.TYPE_INT32, opt, ""),
                        ("input", F.TYPE_MESSAGE, rep, ".inference.ModelInput"),
                        ("output", F.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
                        ("dynamic_batching", F.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"),
                        ("instance_group", F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def parse_config(path):
    return text_format.Parse(path.read_text(), ModelConfig())


def make_artifact(path):
    torch.manual_seed(0)
    cfg = swdet.config.model_preset("retinanet_tiny")
    cfg.num_classes, cfg.imgsz = 3, IMGSZ
    save_artifact(path, build_model(cfg), build_metadata(cfg, PostprocessConfig(max_det=50), class_names=["a", "b", "c"],
                                                         category_ids=[1, 2, 3], method=["focal"]))
    return path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("triton")
    art = make_artifact(d / "art")
    return export_onnx(art, d / "dyn.onnx"), export_onnx(art, d / "fixed.onnx", batch=1)


def io_dims(cfg):
    return ({i.name: (i.data_type, list(i.dims)) for i in cfg.input},
            {o.name: (o.data_type, list(o.dims)) for o in cfg.output})


def test_dynamic_onnx_repository(onnx_files, tmp_path):
    dyn, _ = onnx_files
    folder = write_triton_repository(dyn, tmp_path / "repo", model_name="det", max_batch=16,
                                     preferred_batch_sizes=[8, 4], max_queue_delay_us=250)
    assert folder == tmp_path / "repo" / "det"
    assert (folder / "1" / "model.onnx").read_bytes() == dyn.read_bytes()
    assert (folder / "model.json").is_file()
    cfg = parse_config(folder / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("det", "onnxruntime_onnx", 16)
    fp32, int32 = 11, 8
    ins, outs = io_dims(cfg)
    assert ins == {"images": (fp32, [3, IMGSZ, IMGSZ])}
    assert outs == {"num_dets": (int32, [1]), "det_boxes": (fp32, [50, 4]), "det_scores": (fp32, [50]),
                    "det_classes": (int32, [50])}
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    default = parse_config(write_triton_repository(dyn, tmp_path / "repo2") / "config.pbtxt")
    assert default.max_batch_size == 8 and default.HasField("dynamic_batching")


def test_fixed_batch_model_rules(onnx_files, tmp_path):
    _, fixed = onnx_files
    with pytest.raises(SwdetError, match="dynamic-batch model"):
        write_triton_repository(fixed, tmp_path / "repo", max_batch=4)
    assert not (tmp_path / "repo").exists()
    cfg = parse_config(write_triton_repository(fixed, tmp_path / "repo") / "config.pbtxt")
    ins, outs = io_dims(cfg)
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert ins["images"][1] == [1, 3, IMGSZ, IMGSZ] and outs["det_boxes"][1] == [1, 50, 4]


def test_engine_repository(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan bytes")
    meta = {"format": "swdet-model", "postprocess": {"max_det": 50}, "input": {"size": IMGSZ}}
    write_engine_sidecar(engine, engine_sidecar(meta, tensorrt_version="10.3.0", gpu="g", compute_capability="9.0",
                                                precision="int8", profile=resolve_profile(["b", 3, IMGSZ, IMGSZ], 1, 4, 16),
                                                onnx_sha256="0" * 64))
    folder = write_triton_repository(engine, tmp_path / "repo")
    assert (folder / "1" / "model.plan").read_bytes() == b"plan bytes"
    cfg = parse_config(folder / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, 1)]  # KIND_GPU
    with pytest.raises(SwdetError, match="profile allows batches up to 16"):
        write_triton_repository(engine, tmp_path / "repo", max_batch=32)


def test_bad_arguments(onnx_files, tmp_path):
    dyn, _ = onnx_files
    with pytest.raises(SwdetError, match="preferred"):
        write_triton_repository(dyn, tmp_path / "r", max_batch=4, preferred_batch_sizes=[8])
    with pytest.raises(SwdetError, match="model-name"):
        write_triton_repository(dyn, tmp_path / "r", model_name="a/b")
    with pytest.raises(SwdetError, match="no such file"):
        write_triton_repository(tmp_path / "missing.onnx", tmp_path / "r")
    with pytest.raises(SwdetError, match="no sidecar"):
        (tmp_path / "x.engine").write_bytes(b"")
        write_triton_repository(tmp_path / "x.engine", tmp_path / "r")
