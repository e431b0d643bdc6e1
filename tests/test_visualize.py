"""Drawing detections (swdet.visualize)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from swdet.visualize import class_color, draw_detections

BG = (40, 40, 40)


def canvas(size=(320, 240), mode="RGB"):
    img = Image.new("RGB", size, BG)
    return img.convert(mode) if mode != "RGB" else img


def test_draws_boxes_in_class_colours_on_a_copy():
    img = canvas()
    before = img.tobytes()
    boxes = np.array([[40, 60, 140, 200], [180, 80, 300, 220]], dtype=np.float32)
    out = draw_detections(img, boxes, np.array([0.9, 0.6]), ["person", "car"], line_width=3)
    assert img.tobytes() == before  # input untouched
    assert out is not img and out.size == img.size and out.mode == "RGB"
    px = out.load()
    assert px[40, 130] == class_color("person")  # left edge of box 1
    assert px[300, 150] == class_color("car")    # right edge of box 2
    assert px[90, 150] == BG and px[240, 170] == BG  # box interiors are not filled
    assert px[5, 230] == BG  # far from every box


def colour_mask(pixels: np.ndarray, name: str) -> np.ndarray:
    """Pixels exactly of the class colour of ``name``."""
    return (pixels.astype(int) == np.array(class_color(name))).all(-1)


def test_label_text_and_score_are_drawn_above_the_box():
    boxes = np.array([[60, 100, 200, 200]])
    out = np.asarray(draw_detections(canvas(), boxes, [0.87], ["dog"], font_size=14))
    strip = out[75:99, 60:320]  # just above the box
    assert colour_mask(strip, "dog").mean() > 0.05  # the label background
    assert (np.abs(strip.astype(int) - np.array(class_color("dog"))).sum(-1) > 100).any()  # text
    # the label grows with the text
    long_name = "dog-and-a-very-long-name"
    wide = np.asarray(draw_detections(canvas(), boxes, [0.87], [long_name], font_size=14))
    assert colour_mask(wide[75:99, 60:320], long_name).sum() > colour_mask(strip, "dog").sum()


def test_box_at_top_edge_gets_its_label_inside():
    boxes = np.array([[10, 0, 200, 120]])
    out = np.asarray(draw_detections(canvas(), boxes, [0.5], ["cat"], font_size=14))
    assert colour_mask(out[2:18, 12:60], "cat").mean() > 0.2


def test_score_threshold_hides_low_scores():
    boxes = np.array([[20, 20, 100, 100], [150, 40, 300, 200]])
    out = draw_detections(canvas(), boxes, [0.2, 0.8], ["a", "b"], score_threshold=0.5, line_width=2)
    px = out.load()
    assert px[20, 60] == BG  # the 0.2 box is not drawn
    assert px[150, 120] == class_color("b")


def test_no_detections_returns_an_unchanged_rgb_copy():
    img = canvas(mode="L")
    out = draw_detections(img, np.zeros((0, 4)), np.zeros(0), [])
    assert out.mode == "RGB" and out.tobytes() == img.convert("RGB").tobytes()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_image_modes(mode):
    boxes = np.array([[10, 10, 90, 90]])
    out = draw_detections(canvas(mode=mode), boxes, [0.5], ["x"], line_width=2)
    assert out.mode == "RGB" and out.load()[10, 50] == class_color("x")


def test_boxes_outside_the_image_are_clipped():
    boxes = np.array([[-50, -50, 1000, 1000]])
    out = draw_detections(canvas(), boxes, [0.5], ["big"], line_width=2)
    assert out.size == (320, 240) and out.load()[0, 120] == class_color("big")


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="differ in length"):
        draw_detections(canvas(), np.zeros((2, 4)), [0.1], ["a", "b"])


def test_class_colours_are_deterministic_across_processes_and_distinct():
    names = ["person", "car", "dog", "cat", "bicycle", "traffic light"]
    colours = [class_color(n) for n in names]
    assert len(set(colours)) == len(names)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)
    code = "from swdet.visualize import class_color; print(class_color('person'), class_color('car'))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == f"{class_color('person')} {class_color('car')}"
