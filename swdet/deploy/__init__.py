"""Deployment facts shared by the export, calib and serve stages (core: imports no stage).

- :mod:`~swdet.deploy.onnx_meta`: the ``model.json`` stored inside every exported ONNX graph
  (``metadata_props["swdet"]``), and the score threshold baked into a deployed model;
- :mod:`~swdet.deploy.engine_meta`: the sidecar of a TensorRT engine (``model.engine.json``)
  and the rules that decide whether this machine can run it;
- :mod:`~swdet.deploy.trt_rules`: the static check of a graph against TensorRT 10's ONNX parser;
- :mod:`~swdet.deploy.graph`: ONNX graph helpers (loading with one-line errors, consumers,
  lossless clean-up, the checker with shape inference).

No stage imports a private name of another: what two of them need lives here.
"""
