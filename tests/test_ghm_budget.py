"""benchmarks/ghm_budget.py: the element groups and their gradient shares."""


import pytest
import torch

from conftest import load_benchmark

@pytest.fixture(scope="module")
def gb():
    return load_benchmark("ghm_budget")


def test_element_groups(gb):
    labels = torch.tensor([0, -1, -1, -2, 2])  # positive of class 0, two negatives, ignored, class 2
    best_iou = torch.tensor([0.6, 0.2, 0.05, 0.45, 0.7])
    got = gb.element_groups(labels, best_iou, 3)
    assert got.tolist() == [[0, 1, 1], [2, 2, 2], [3, 3, 3], [-1, -1, -1], [1, 1, 0]]


def test_grad_shares(gb):
    groups = torch.tensor([[0, 1], [2, 3], [-1, -1]])
    grad = torch.tensor([[2.0, 1.0], [0.5, 0.5], [100.0, 100.0]])  # the ignored row counts nowhere
    s = gb.grad_shares(grad, groups)
    assert s["pos"]["share"] == pytest.approx(0.5) and s["confusion"]["share"] == pytest.approx(0.25)
    assert s["near"]["per_elem/pos"] == pytest.approx(0.25) and s["background"]["count"] == 1
