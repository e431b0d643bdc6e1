"""benchmarks/class_confusion.py: the class-agnostic view and the class accuracy of covered GTs."""


import pytest

from conftest import load_benchmark

@pytest.fixture(scope="module")
def cc():
    return load_benchmark("class_confusion")


def _gt():
    return {"images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "area": 100, "iscrowd": 0},
                            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0}]}


def test_class_accuracy_takes_the_best_scoring_covering_detection(cc):
    preds = [
        # GT 1 (class 1): covered by a wrong-class box scoring higher than the right one -> wrong
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.5},
        # GT 2 (class 2): right class -> right; a far box of class 1 does not cover it
        {"image_id": 1, "category_id": 2, "bbox": [51, 50, 10, 10], "score": 0.4},
        {"image_id": 1, "category_id": 1, "bbox": [80, 80, 10, 10], "score": 0.99},
        # GT 3: covered only at IoU 1/3 -> not counted
        {"image_id": 2, "category_id": 1, "bbox": [25, 20, 10, 10], "score": 0.8},
    ]
    assert cc.class_accuracy(_gt(), preds) == pytest.approx(1 / 2)
    assert cc.class_accuracy(_gt(), []) is None


def test_agnostic_gt_merges_every_category(cc):
    agn = cc.agnostic_gt(_gt())
    assert [c["id"] for c in agn["categories"]] == [1]
    assert {a["category_id"] for a in agn["annotations"]} == {1}
    assert len(agn["annotations"]) == 3 and _gt()["annotations"][1]["category_id"] == 2  # input untouched
