# -*- coding: utf-8 -*-
"""Tests of demo.py: pictures of the predictions of a smoke-config checkpoint, and its errors."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")

from panet_d2 import PANetCheckpointer, model_zoo  # noqa: E402
from panet_d2.engine import CheckpointError, ImageLoadError, InputError  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance_smoke.yaml")


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("panet_demo", os.path.join(ROOT, "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the smoke config's model, written by PANetCheckpointer."""
    torch.manual_seed(0)
    model = model_zoo.get("quick_schedules/panet_R_18_synth_instance_smoke.yaml", device="cpu")
    out = tmp_path_factory.mktemp("demo_weights")
    PANetCheckpointer(model, save_dir=str(out)).save("model_smoke")
    return str(out / "model_smoke.pth")


@pytest.fixture(scope="module")
def images(shared_data):
    paths = [os.path.join(shared_data, "demo_images", n) for n in ("img1.jpg", "img2.jpg")]
    for p in paths:
        assert os.path.isfile(p), p
    return paths


def _argv(weights, *args):
    return ["--config-file", SMOKE, *args, "--confidence-threshold", "0.2",
            "--opts", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
            "TEST.DETECTIONS_PER_IMAGE", "5"]  # few instances to draw: fast


def test_demo_writes_pictures(demo, weights, images, tmp_path):
    out = tmp_path / "vis"
    written = demo.main(_argv(weights, "--input", *images, "--output", str(out)))
    assert [os.path.basename(p) for p in written] == ["img1.jpg", "img2.jpg"]
    for src, dst in zip(images, written):
        picture = cv2.imread(dst)
        assert picture is not None, dst  # a valid image file
        assert picture.shape == cv2.imread(src).shape
        assert picture.std() > 0
    # one input, output given as a file name (format from its extension)
    single = tmp_path / "single.png"
    assert demo.main(_argv(weights, "--input", images[0], "--output", str(single))) == [str(single)]
    assert cv2.imread(str(single)) is not None


def test_expand_inputs(demo, shared_data, images, tmp_path):
    folder = os.path.join(shared_data, "demo_images")
    assert demo.expand_inputs([folder]) == sorted(
        os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".jpg")
    )
    assert demo.expand_inputs([os.path.join(folder, "img[12].jpg")]) == images
    assert demo.expand_inputs(images) == images
    with pytest.raises(InputError, match="matches no files"):
        demo.expand_inputs([str(tmp_path / "*.jpg")])
    with pytest.raises(InputError, match="contains no image files"):
        demo.expand_inputs([str(tmp_path)])
    outs = demo.output_paths(["a/x.jpg", "b/x.jpg"], str(tmp_path / "o"))
    assert [os.path.basename(p) for p in outs] == ["x.jpg", "x_1.jpg"]


def test_demo_errors(demo, weights, images, tmp_path):
    missing = str(tmp_path / "no_such_image.jpg")
    with pytest.raises(InputError, match="no_such_image.jpg.*does not exist"):
        demo.main(_argv(weights, "--input", missing, "--output", str(tmp_path / "o")))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match="Cannot read input image.*broken.jpg"):
        demo.main(_argv(weights, "--input", str(broken), "--output", str(tmp_path / "o")))
    with pytest.raises(CheckpointError, match="nope.pth.*does not exist"):
        demo.main(
            _argv(str(tmp_path / "nope.pth"), "--input", images[0], "--output", str(tmp_path / "o"))
        )


def test_panoptic_predictions_are_drawn(demo):
    """An output with "panoptic_seg" is drawn with draw_panoptic_seg_predictions."""
    from detectron2.data import MetadataCatalog

    class FakePredictor:
        def __call__(self, image):
            h, w = image.shape[:2]
            seg = torch.zeros((h, w), dtype=torch.int32)
            seg[: h // 2] = 1
            seg[h // 2 :, : w // 2] = 2
            info = [
                {"id": 1, "category_id": 1, "isthing": False},
                {"id": 2, "category_id": 0, "isthing": True, "score": 0.9},
            ]
            return {"panoptic_seg": (seg, info)}

    vis = demo.VisualizationDemo.__new__(demo.VisualizationDemo)
    vis.metadata = MetadataCatalog.get("panet_synth_val_panoptic")
    vis.cpu_device = torch.device("cpu")
    vis.instance_mode = demo.ColorMode.IMAGE
    vis.predictor = FakePredictor()
    image = np.full((64, 80, 3), 128, np.uint8)
    predictions, out = vis.run_on_image(image)
    assert "panoptic_seg" in predictions
    picture = out.get_image()
    assert picture.shape == (64, 80, 3) and not np.all(picture == 128)
