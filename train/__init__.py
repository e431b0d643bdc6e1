"""swdet.train: training with the sample-weighting losses of five papers.

- :mod:`~swdet.train.weighting`: the weighting core, pure vectorized functions, one equation each;
- :mod:`~swdet.train.methods`: each paper's method on that core (``--method``, composable);
- :mod:`~swdet.train.assign`, :mod:`~swdet.train.losses`, :mod:`~swdet.train.criterion`: target
  assignment and the general weighted loss; :mod:`~swdet.train.retina_loss` and
  :mod:`~swdet.train.rcnn_loss`: the detector losses the architecture table names;
- :mod:`~swdet.train.engine`: the trainer (``train(cfg, out_dir)`` writes a run directory), with
  :mod:`~swdet.train.distributed`, :mod:`~swdet.train.schedule`, :mod:`~swdet.train.runlog` and
  :mod:`~swdet.train.checkpoint` around it; :mod:`~swdet.train.stats` (anchor statistics),
  :mod:`~swdet.train.diagnostics` and :mod:`~swdet.train.plots`.

Nothing here is needed to deploy a model: the artifact a run writes is the detector alone.
"""
