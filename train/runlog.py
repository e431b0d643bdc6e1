"""What a run logs: ``log.jsonl`` (mirrored to TensorBoard when installed) and the device-side
running sums behind each logged record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch


class JsonlLog:
    """``log.jsonl`` (one object per logged step), mirrored to TensorBoard events when the
    ``tensorboard`` package is installed (``pip install "swdet[tensorboard]"``)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # tensorboard not installed: the JSON log is the record
                self.tb = None

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop records past the checkpoint so the log has no duplicated iterations."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("iter", 0) <= iteration:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tb is not None and "iter" in record:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                        self.tb.add_scalar(k, v, record["iter"])
                self.tb.flush()


@dataclass
class Accumulator:
    """Device-side running sums of the logged quantities (read every ``log_every`` steps)."""

    sums: dict = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        vals = torch.stack([self.sums[k].reshape(()) for k in keys]).cpu().tolist()  # one sync
        out = {k: v / max(1, self.count) for k, v in zip(keys, vals)}
        self.sums, self.count = {}, 0
        return out
