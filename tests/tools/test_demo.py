# -*- coding: utf-8 -*-
"""
Tests of demo.py: the pictures it writes for the in-repo photos (small random-weight panoptic
PANet, saved as a checkpoint: the demo needs weights), images of every mode, a video, a
LazyConfig, the window-mode message and its error lines.
"""

import functools
import logging
import os
import re
import textwrap
import types

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data.catalog import Metadata  # noqa: E402

from panet_d2.errors import ImageLoadError  # noqa: E402

from ..common import ROOT, error_exit, load_script, logged_messages  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

PANOPTIC = os.path.join(ROOT, "configs", "quick_schedules", "panoptic_panet_R_18_synth.yaml")
# random weights (a checkpoint written by the `weights` fixture), small test size, few instances
# to draw: fast
SMALL = [
    "MODEL.WEIGHTS",
    "<written by the weights fixture>",
    "MODEL.DEVICE",
    "cpu",
    "INPUT.MIN_SIZE_TEST",
    "96",
    "INPUT.MAX_SIZE_TEST",
    "160",
    "TEST.DETECTIONS_PER_IMAGE",
    "3",
]
HEADLESS = "GUI: NONE" in " ".join(cv2.getBuildInformation().split())

# A tiny Mask R-CNN with PANet's backbone (bottom-up path augmentation), built from Detectron2's
# LazyConfig model of Mask R-CNN FPN.
LAZY_CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from panet_d2.modeling import PAFPN

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone._target_ = PAFPN
model.backbone.bottom_up.stages.depth = 18
model.backbone.bottom_up.stages.norm = "BN"
del model.backbone.bottom_up.stages.stride_in_1x1  # BasicBlock has none
model.backbone.out_channels = 32
model.proposal_generator.head.in_channels = 32
model.roi_heads.num_classes = 3
model.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
model.roi_heads.box_head.fc_dims = [64, 64]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
model.roi_heads.box_predictor.test_topk_per_image = 3
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, height=14, width=14)
model.roi_heads.mask_head.conv_dims = [16, 16]
train = dict(init_checkpoint="", device="cpu")
dataloader = dict(test=dict(
    dataset=dict(names="panet_synth_val"),
    mapper=dict(augmentations=[L(T.ResizeShortestEdge)(short_edge_length=96, max_size=160)]),
))
"""


@pytest.fixture(scope="module")
def demo():
    return load_script("demo.py", "panet_demo")


@pytest.fixture(scope="module", autouse=True)
def weights(tmp_path_factory):
    """A checkpoint of a freshly built model of PANOPTIC, the MODEL.WEIGHTS of SMALL."""
    from detectron2.modeling import build_model

    from ..common import panet_cfg

    torch.manual_seed(0)
    model = build_model(panet_cfg(PANOPTIC))
    path = str(tmp_path_factory.mktemp("demo_weights") / "random_panoptic.pth")
    torch.save({"model": model.state_dict()}, path)
    SMALL[1] = path
    return path


@pytest.fixture(scope="module")
def photos(shared_data):
    folder = os.path.join(shared_data, "demo_images")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    assert len(names) >= 2, folder
    return folder, names


LAZY_QUICK = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_lazy.py")


def run_demo(demo, *args, config=PANOPTIC, opts=SMALL):
    return demo.main(["--config-file", config, *args, "--opts", *opts])


def error_line(demo, *args, **kwargs):
    """The one line `main` exits with (what the command line prints to stderr)."""
    return error_exit(run_demo, demo, *args, **kwargs)


def image_size(path):
    return cv2.imread(path).shape  # fails on a file that is not an image


def test_photos_folder_to_folder(demo, photos, tmp_path):
    folder, names = photos
    written = run_demo(demo, "--input", folder + os.sep, "--output", str(tmp_path / "vis"))
    assert [os.path.basename(p) for p in written] == names
    for name, out in zip(names, written):
        source = cv2.imread(os.path.join(folder, name))
        picture = cv2.imread(out)
        assert picture.shape == source.shape, name
        assert np.abs(picture.astype(int) - source).mean() > 1, name  # something is drawn
    # the project's loggers are set up with Detectron2's
    assert logging.getLogger("panet_d2").handlers and logging.getLogger("detectron2").handlers


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_says_what_it_found_per_image(demo, photos, tmp_path):
    # per image, as Detectron2's demo: the instances found and the panoptic segments; the
    # checkpoint's path (never an empty one: "Loading from  ...")
    folder, names = photos
    records = _Records()
    loggers = [logging.getLogger(n) for n in ("panet_d2", "detectron2", "fvcore")]
    for logger in loggers:
        logger.addHandler(records)
    try:
        run_demo(demo, "--input", folder, "--output", str(tmp_path / "vis"))
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    args = demo.get_parser().parse_args(["--config-file", PANOPTIC, "--opts", *SMALL])
    predictor = demo.build_predictor(args)
    for name in names:
        path = os.path.join(folder, name)
        outputs = predictor(demo.read_bgr(path))
        segments = outputs["panoptic_seg"][1]
        things = len([s for s in segments if s["isthing"]])
        expected = (
            "{}: detected {} instances, {} panoptic segments ({} things, {} stuff) in".format(
                path, len(outputs["instances"]), len(segments), things, len(segments) - things
            )
        )
        assert [m for m in records.messages if m.startswith(expected)], (expected, records.messages)
    assert not [m for m in records.messages if re.search(r"Loading from\s+\.\.\.", m)]
    assert [m for m in records.messages if "Loading from {} ...".format(SMALL[1]) in m]


def test_score_threshold_of_the_flag_or_the_opts(demo):
    """--confidence-threshold (default 0.5) sets every score key; score keys given in --opts are
    used as given (Detectron2's demo sets 0.5 over them, silently)."""

    def scores(*argv, opts=()):
        args = demo.get_parser().parse_args(["--config-file", PANOPTIC, *argv, "--opts", *SMALL])
        args.opts += list(opts)
        cfg = demo.build_predictor(args).cfg
        return [functools.reduce(getattr, k.split("."), cfg) for k in demo.SCORE_KEYS]

    assert scores() == [0.5] * 3
    assert scores("--confidence-threshold", "0.25") == [0.25] * 3
    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.9"]
    opts += ["MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH", "0.8"]
    assert scores(opts=opts) == [0.9, 0.05, 0.8]  # RetinaNet's: Detectron2's default


def test_config_score_threshold_replaced_and_tta_not_run_said(demo, tmp_path, caplog):
    """A score threshold the config file sets (not Detectron2's default) is replaced by
    --confidence-threshold's default 0.5, as in Detectron2's demo, but said; given as the flag's
    value it is kept."""
    config = tmp_path / "mine.yaml"
    config.write_text(f"_BASE_: {PANOPTIC}\nMODEL:\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 0.9\n")

    def said(*argv):
        args = demo.get_parser().parse_args(["--config-file", str(config), *argv, "--opts", *SMALL])
        caplog.clear()
        cfg = demo.build_predictor(args).cfg
        return cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, [
            r.getMessage() for r in caplog.records if "SCORE_THRESH" in r.getMessage()
        ]

    assert said() == (
        0.5,
        [
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.9 in the config: the demo shows the instances "
            "scored >= 0.5 (--confidence-threshold's default); to keep 0.9, give "
            "--confidence-threshold 0.9."
        ],
    )
    assert said("--confidence-threshold", "0.9") == (0.9, [])
    config.write_text(f"_BASE_: {PANOPTIC}\n")  # Detectron2's defaults: nothing to say
    assert said()[1] == []
    # the plain model, also under TEST.AUG.ENABLED (Detectron2's demo: not said)
    args = demo.get_parser().parse_args(["--config-file", PANOPTIC, "--opts", *SMALL])
    args.opts += ["TEST.AUG.ENABLED", "True"]
    caplog.clear()
    demo.build_predictor(args)
    assert "TEST.AUG.ENABLED=True: the demo shows the plain model's output, without" in caplog.text


def test_glob_and_file_name_output(demo, photos, tmp_path):
    folder, names = photos
    pattern = os.path.join(folder, "img[12].jpg")
    written = run_demo(demo, "--input", pattern, "--output", str(tmp_path / "out"))
    assert [os.path.basename(p) for p in written] == ["img1.jpg", "img2.jpg"]
    one = str(tmp_path / "new" / "one.png")  # a file name: its folder is created
    assert run_demo(demo, "--input", os.path.join(folder, names[0]), "--output", one) == [one]
    assert image_size(one) == cv2.imread(os.path.join(folder, names[0])).shape


def _mode_images(folder):
    """Images of several PIL modes; returns {name: expected RGB array}."""
    rng = np.random.RandomState(0)
    expected = {}
    gray16 = (np.linspace(0, 65535, 72 * 96).reshape(72, 96)).astype(np.uint16)
    cv2.imwrite(os.path.join(folder, "gray16.png"), gray16)  # PIL mode "I;16"
    expected["gray16.png"] = np.repeat(np.round(gray16 / 257.0).astype(np.uint8)[..., None], 3, 2)
    palette = Image.fromarray(rng.randint(0, 4, (64, 80)).astype(np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 200, 200, 200] + [0] * 756)
    palette.save(os.path.join(folder, "palette.png"))
    expected["palette.png"] = np.asarray(palette.convert("RGB"))
    rgba = rng.randint(0, 256, (64, 80, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(os.path.join(folder, "rgba.png"))
    expected["rgba.png"] = rgba[..., :3]
    gray = rng.randint(0, 256, (64, 80)).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(os.path.join(folder, "gray8.png"))
    expected["gray8.png"] = np.repeat(gray[..., None], 3, 2)
    # stored 100 wide x 60 high, left half red; EXIF orientation 6: shown 60 x 100, red on top
    stored = np.zeros((60, 100, 3), np.uint8)
    stored[:, :50] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(os.path.join(folder, "exif6.jpg"), exif=exif, quality=95)
    expected["exif6.jpg"] = np.rot90(stored, k=-1)  # 90 degrees clockwise
    return expected


def test_images_of_every_mode(demo, tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    expected = _mode_images(str(folder))
    for name, rgb in expected.items():
        image = demo.read_bgr(str(folder / name))
        assert image.dtype == np.uint8 and image.shape == rgb.shape, name
        diff = np.abs(image[..., ::-1].astype(int) - rgb)
        assert diff.mean() < 3 if name.endswith(".jpg") else diff.max() <= 1, name  # JPEG: lossy
    assert demo.read_bgr(str(folder / "gray16.png")).mean() < 200  # not clipped to white
    written = run_demo(demo, "--input", str(folder), "--output", str(tmp_path / "vis"))
    assert sorted(os.path.basename(p) for p in written) == sorted(expected)
    for out in written:
        assert image_size(out) == expected[os.path.basename(out)].shape, out


def test_32_bit_images_are_refused(demo, tmp_path):
    path = str(tmp_path / "int32.tif")
    Image.fromarray(np.arange(64 * 80, dtype=np.int32).reshape(64, 80)).save(path)
    with pytest.raises(ImageLoadError, match=r"int32\.tif.*mode 'I'"):
        demo.read_bgr(path)


def test_input_not_resized_and_too_large(demo, tmp_path):
    """INPUT.MIN_SIZE_TEST 0 runs images as read: one longer than 8192 px is refused, named."""
    path = str(tmp_path / "wide.png")
    Image.new("RGB", (8200, 100)).save(path)
    opts = SMALL[:5] + ["0"] + SMALL[6:]
    line = error_line(demo, "--input", path, "--output", str(tmp_path / "out"), opts=opts)
    assert line.startswith(f"ERROR: The input image {path!r} is 8200x100 (width x height) as the ")
    # resized (INPUT.MIN_SIZE_TEST 96, MAX_SIZE_TEST 160) the model gets 160 x 16: taken
    big = str(tmp_path / "big.png")
    Image.new("RGB", (8200, 820)).save(big)
    out = str(tmp_path / "big_out.png")
    assert run_demo(demo, "--input", big, "--output", out) == [out]


def test_image_output_of_a_suffix_opencv_cannot_write(demo, photos, tmp_path):
    """--output single.mp4 for an image: refused (it wrote single.mp4.png without a word)."""
    folder, names = photos
    out = str(tmp_path / "single.mp4")
    line = error_line(demo, "--input", os.path.join(folder, names[0]), "--output", out)
    assert line == (
        f"ERROR: --output={out!r}: OpenCV writes no color picture of that suffix: give a .png or "
        ".jpg name, or a folder."
    )
    assert os.listdir(tmp_path) == []


def test_video(demo, tmp_path):
    source = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(source, cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (112, 80))
    rng = np.random.RandomState(0)
    for _ in range(3):
        writer.write(rng.randint(0, 256, (80, 112, 3)).astype(np.uint8))
    writer.release()
    written = run_demo(demo, "--video-input", source, "--output", str(tmp_path / "vis"))
    assert written == [str(tmp_path / "vis" / "clip.mp4")]
    video = cv2.VideoCapture(written[0])
    frames = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        assert frame.shape == (80, 112, 3)
        frames += 1
    video.release()
    assert frames == 3
    # a file that is no video, which OpenCV opens as an image sequence and reads no frame of:
    # one line, nothing written (Detectron2's demo ends silently)
    fake = tmp_path / "not_a_video.jpg"
    fake.write_text("not a video")
    out = tmp_path / "fake_vis"
    msg = error_line(demo, "--video-input", str(fake), "--output", str(out))
    assert msg == (
        f"ERROR: Cannot read a frame of the video {str(fake)!r}: not a video, or in a format that "
        "OpenCV cannot decode here."
    ), msg
    assert not out.exists()  # the folder it created, empty, is removed
    # --webcam without a camera (none in this VM): nested new folders removed, existing ones kept
    if cv2.VideoCapture(0).isOpened():
        return
    out = tmp_path / "new" / "sub" / "webcam.mp4"
    msg = error_line(demo, "--webcam", "--output", str(out))
    assert msg == "ERROR: Cannot open the video 'webcam'.", msg
    assert sorted(os.listdir(tmp_path)) == ["clip.avi", "not_a_video.jpg", "vis"]


def test_lazy_config(demo, photos, tmp_path):
    config = tmp_path / "tiny_panet_lazy.py"
    config.write_text(textwrap.dedent(LAZY_CONFIG))
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(config)).model)
    checkpoint = str(tmp_path / "tiny.pth")
    torch.save({"model": model.state_dict()}, checkpoint)
    args = demo.get_parser().parse_args(
        ["--config-file", str(config), "--opts", "train.init_checkpoint=" + checkpoint]
    )
    predictor = demo.build_predictor(args)
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    assert predictor.model.roi_heads.box_predictor.test_score_thresh == 0.5
    folder, names = photos
    image = os.path.join(folder, names[0])
    out = str(tmp_path / "lazy.jpg")
    opts = ["train.init_checkpoint=" + checkpoint]
    assert run_demo(demo, "--input", image, "--output", out, config=str(config), opts=opts) == [out]
    assert image_size(out) == cv2.imread(image).shape
    missing = str(tmp_path / "missing_lazy.pth")
    msg = error_line(
        demo,
        "--input",
        image,
        "--output",
        out,
        config=str(config),
        opts=["train.init_checkpoint=" + missing],
    )
    assert "missing_lazy.pth" in msg and "does not exist" in msg
    # a key that the model's class does not take (a typo): one line naming the key
    opts = ["train.init_checkpoint=" + checkpoint, "model.roi_heads.box_head.fc_dim=64"]
    msg = error_line(demo, "--input", image, "--output", out, config=str(config), opts=opts)
    assert msg == (
        "ERROR: model.roi_heads.box_head.fc_dim: FastRCNNConvFCHead takes no argument 'fc_dim'; "
        "remove the key or correct its name."
    )
    # test values that the yacs keys refuse (0 detections, or every overlapping box suppressed)
    predictor = "model.roi_heads.box_predictor."
    for value, allowed in [
        ("test_score_thresh=2.0", "a number in [0, 1]"),
        ("test_nms_thresh=-1.0", "a number in [0, 1]"),
        ("test_topk_per_image=0", "an integer >= 1"),
    ]:
        opts = ["train.init_checkpoint=" + checkpoint, predictor + value]
        msg = error_line(demo, "--input", image, "--output", out, config=str(config), opts=opts)
        assert msg == f"ERROR: {predictor}{value}: must be {allowed}."


def test_panoptic_ids_in_the_dataset_convention(demo):
    """Output in the "separated" convention is drawn with a shared-id-space dataset's names."""
    meta = MetadataCatalog.get("test_demo_shared_id_space")
    names = ["sky", "grass", "road", "car", "bus"]  # contiguous ids: stuff 0..2, things 3, 4
    meta.set(
        thing_classes=names,
        stuff_classes=names,
        thing_dataset_id_to_contiguous_id={10: 3, 11: 4},
        stuff_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
    )
    seg = torch.zeros((48, 64), dtype=torch.int32)
    seg[:24], seg[24:, :32], seg[24:, 32:] = 1, 2, 3
    segments = [
        {"id": 1, "category_id": 1, "isthing": True, "score": 0.9},  # thing 1 = bus
        {"id": 2, "category_id": 2, "isthing": False},  # stuff 2 = grass
        {"id": 3, "category_id": 0, "isthing": True, "score": 0.8},
    ]  # thing 0 = car

    class Recorder:
        def draw_panoptic_seg_predictions(self, frame, panoptic_seg, segments_info):
            self.segments_info = segments_info
            return types.SimpleNamespace(get_image=lambda: frame)

    recorder = Recorder()
    rgb = np.full((48, 64, 3), 128, np.uint8)
    demo.draw(rgb, {"panoptic_seg": (seg, segments)}, meta, recorder)
    assert [s["category_id"] for s in recorder.segments_info] == [4, 1, 3]
    picture = demo.draw(rgb, {"panoptic_seg": (seg, segments)}, meta)  # Detectron2's Visualizer
    assert picture.shape == (48, 64, 3) and not np.all(picture == 128)


@pytest.mark.skipif(not HEADLESS, reason="OpenCV has GUI support here: a window would open")
def test_window_mode_message(demo, photos):
    """No --output (or --webcam) with headless OpenCV: one line saying what to do, at once."""
    folder, names = photos
    for args in (["--input", os.path.join(folder, names[0])], ["--webcam"]):
        msg = error_line(demo, *args)
        assert "--output" in msg and "opencv-python" in msg, msg


def test_a_flag_after_the_opts_is_named(demo, photos, tmp_path):
    """--opts takes what follows it: a --output there was read as a config option, and the demo
    said "pass --output" (headless) instead; a LazyConfig: Hydra's LexerNoViableAltException."""
    folder, names = photos
    image, out = os.path.join(folder, names[0]), str(tmp_path / "o.png")
    for config, opts in ((PANOPTIC, list(SMALL)), (LAZY_QUICK, [])):
        msg = error_line(demo, "--input", image, config=config, opts=opts + ["--output", out])
        assert msg.startswith("ERROR: The command-line options [") and msg.endswith(
            "'--output' is an option of the command: give it before the config options."
        ), msg
    assert not os.path.exists(out)


def test_error_lines(demo, photos, tmp_path):
    folder, names = photos
    image, out = os.path.join(folder, names[0]), str(tmp_path / "o")
    msg = error_line(demo, "--input", str(tmp_path / "no_such.jpg"), "--output", out)
    assert "no_such.jpg" in msg
    msg = error_line(demo, "--input", str(tmp_path / "*.png"), "--output", out)
    assert "*.png" in msg
    msg = error_line(demo, "--input", image, "--output", out, config=str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in msg and "does not exist" in msg
    msg = error_line(
        demo,
        "--input",
        image,
        "--output",
        out,
        opts=SMALL + ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")],
    )
    assert "nope.pth" in msg and "MODEL.WEIGHTS" in msg and "does not exist" in msg
    opts = SMALL + ["MODEL.WEIGHTS", str(tmp_path)]
    msg = error_line(demo, "--input", image, "--output", out, opts=opts)
    assert msg.startswith(
        "ERROR: Checkpoint {!r} is a folder (MODEL.WEIGHTS).".format(str(tmp_path))
    )
    msg = error_line(demo, "--video-input", str(tmp_path / "nope.mp4"), "--output", out)
    assert "nope.mp4" in msg and msg.endswith("does not exist.")
    msg = error_line(demo, "--video-input", str(tmp_path), "--output", out)  # a folder
    assert msg.endswith("(--video-input) is not a regular file."), msg
    msg = error_line(demo, "--input", image, "--output", out, opts=SMALL + ["MODEL.NO_KEY", "1"])
    assert "MODEL.NO_KEY" in msg and "panoptic_panet_R_18_synth.yaml" in msg
    # the config's values are checked as train_net.py --eval-only checks them
    opts = SMALL + ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"]  # AFP on
    msg = error_line(demo, "--input", image, "--output", out, opts=opts)
    assert msg.startswith("ERROR: MODEL.AFP.ENABLED=True is read by PANetROIHeads only"), msg
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    msg = error_line(demo, "--input", str(broken), "--output", out)
    assert "Cannot read input image" in msg and "broken.jpg" in msg
    assert "Nothing to do" in error_line(demo, "--output", out)
    msg = error_line(demo, "--input", image, "--video-input", image, "--output", out)  # not one
    assert msg == "ERROR: --input and --video-input: give one of them (each is a source of images)."
    opts = SMALL + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.9"]
    msg = error_line(
        demo, "--input", image, "--output", out, "--confidence-threshold", "0.3", opts=opts
    )
    assert msg == (
        "ERROR: --confidence-threshold 0.3 and MODEL.ROI_HEADS.SCORE_THRESH_TEST (--opts) both set "
        "the lowest instance score shown: give one of them."
    )
    for bad in ("1.5", "-0.1", "nan"):  # the instance score threshold, also of instance models
        msg = error_line(demo, "--input", image, "--output", out, "--confidence-threshold", bad)
        assert (
            msg == "ERROR: --confidence-threshold {}: must be a number in [0, 1] (the lowest "
            "instance score shown).".format(float(bad))
        )
    mine = tmp_path / "mine.jpg"  # a file of the user's, given as the folder of two pictures
    mine.write_bytes(b"mine")
    msg = error_line(demo, "--input", image, os.path.join(folder, names[1]), "--output", str(mine))
    assert msg == "ERROR: --output={!r} is a file: give a folder (created if missing).".format(
        str(mine)
    )
    assert mine.read_bytes() == b"mine"
    msg = error_line(demo, "--input", image, folder, "--output", str(mine / "sub"))
    assert msg.startswith("ERROR: --output={!r} cannot be created: ".format(str(mine / "sub")))


def test_weights_and_inputs_errors_issue_17(demo, photos, tmp_path, capsys):
    """No weights, a truncated checkpoint, a LazyConfig syntax error: one line each; an unreadable
    image among readable ones: reported, the others drawn, exit code 2 at the end."""
    folder, names = photos
    image, out = os.path.join(folder, names[0]), str(tmp_path / "o")
    msg = error_line(demo, "--input", image, "--output", out, opts=SMALL + ["MODEL.WEIGHTS", ""])
    assert (
        msg == "ERROR: MODEL.WEIGHTS is empty: the demo shows a trained model; give its checkpoint."
    )
    truncated = tmp_path / "truncated.pth"
    with open(SMALL[1], "rb") as f:
        truncated.write_bytes(f.read()[:4096])
    msg = error_line(
        demo, "--input", image, "--output", out, opts=SMALL + ["MODEL.WEIGHTS", str(truncated)]
    )
    assert msg.startswith("ERROR: Cannot read checkpoint {!r}: ".format(str(truncated)))
    config = tmp_path / "broken_lazy.py"
    config.write_text("from detectron2.config import LazyCall as L\nmodel = dict(\ntrain = 1\n")
    msg = error_line(demo, "--input", image, "--output", out, config=str(config), opts=[])
    assert msg.startswith("ERROR: Config file {}:2: SyntaxError: ".format(config)), msg
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a_broken.jpg").write_bytes(b"not a jpeg")
    for name in names[:2]:
        with open(os.path.join(folder, name), "rb") as f:
            (mixed / name).write_bytes(f.read())
    capsys.readouterr()
    msg = error_line(demo, "--input", str(mixed), "--output", out)
    assert msg.startswith("ERROR: 1 of 3 input images could not be read (the others were shown)")
    assert "a_broken.jpg" in msg
    printed = [line for line in capsys.readouterr().err.splitlines() if "a_broken.jpg" in line]
    assert printed[-1] == msg  # the last line: the summary (exit code 2)
    assert len(printed) == 2 and printed[0].startswith("ERROR: Cannot read input image")
    assert sorted(os.listdir(out)) == sorted(names[:2])  # the readable ones, after the broken one
    # one input that cannot be read: its own line, once (no summary of "1 of 1")
    msg = error_line(demo, "--input", str(mixed / "a_broken.jpg"), "--output", out)
    assert msg.startswith("ERROR: Cannot read input image {!r}".format(str(mixed / "a_broken.jpg")))
    assert sum("a_broken.jpg" in line for line in capsys.readouterr().err.splitlines()) == 1


def test_exit_codes_as_documented(demo, tmp_path):
    """demo.py's docstring names the exit code it exits with (2, the table of
    docs/reliability.md; an unreadable image: test_weights_and_inputs_errors_issue_17)."""
    doc = " ".join(demo.__doc__.split())
    assert set(re.findall(r"exit(?:s with| code) (\d+)", doc)) == {"2"}
    with pytest.raises(SystemExit) as e:
        run_demo(demo, "--output", str(tmp_path))  # nothing to do: an input error
    assert e.value.code == 2


def _write_image(path, height, width, seed=0):
    bgr = np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)
    assert cv2.imwrite(str(path), bgr)
    return str(path)


def _video(path, frames=2, size=(112, 80)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, size)
    for i in range(frames):
        writer.write(np.random.RandomState(i).randint(0, 256, size[::-1] + (3,)).astype(np.uint8))
    writer.release()
    return str(path)


def _no_model(tmp_path):
    """SMALL with weights that do not exist: an error line on --output comes before the model."""
    return SMALL + ["MODEL.WEIGHTS", str(tmp_path / "never_loaded.pth")]


def test_file_names_with_glob_characters(demo, tmp_path):
    """An existing file is used as it is, also a name that is a glob pattern of another file."""
    literal = _write_image(tmp_path / "a[1].png", 40, 56)
    _write_image(tmp_path / "a1.png", 48, 64)  # what the pattern a[1].png matches
    assert demo.expand_inputs([literal]) == [literal]
    os.remove(str(tmp_path / "a1.png"))
    assert demo.expand_inputs([literal]) == [literal]
    assert demo.expand_inputs([str(tmp_path / "a*.png")]) == [literal]  # patterns still match


def test_output_names_are_unique(demo, tmp_path):
    """Two inputs of one name: every picture is named "{input index}_{name}", none overwritten."""
    inputs = []
    for i, (sub, name) in enumerate([("x", "img.png"), ("y", "img.png"), ("z", "0_img.png")]):
        (tmp_path / sub).mkdir()
        inputs.append(_write_image(tmp_path / sub / name, 40 + 8 * i, 56, seed=i))
    out = tmp_path / "oc"
    written = run_demo(demo, "--input", *inputs, "--output", str(out))
    assert written == [str(out / n) for n in ("0_img.png", "1_img.png", "2_0_img.png")]
    assert sorted(os.listdir(out)) == ["0_img.png", "1_img.png", "2_0_img.png"]
    assert [image_size(p)[0] for p in written] == [40, 48, 56]  # each of its own input
    assert demo.output_files(inputs[:1] + inputs[2:], str(out)) == [
        str(out / "img.png"),
        str(out / "0_img.png"),
    ]  # no two of one name: the names of the inputs


def test_output_that_cannot_be_created(demo, photos, tmp_path):
    """--output whose folder cannot be made: one line, before the model loads (it would say that
    the weights do not exist)."""
    folder, names = photos
    image, video = os.path.join(folder, names[0]), _video(tmp_path / "v.avi")
    mine = tmp_path / "mine.png"  # a file of the user's
    mine.write_bytes(b"mine")
    for source, out in [
        (["--input", image], mine / "x.png"),
        (["--video-input", video], mine / "x.mp4"),
    ]:
        msg = error_line(demo, *source, "--output", str(out), opts=_no_model(tmp_path))
        assert msg == (
            "ERROR: --output={!r}: its folder={!r} is a file: give a folder (created if "
            "missing).".format(str(out), str(mine))
        )
    msg = error_line(
        demo, "--input", image, "--output", "/proc/sub/x.png", opts=_no_model(tmp_path)
    )
    assert msg.startswith("ERROR: --output='/proc/sub/x.png': its folder='/proc/sub' cannot be")
    noext = tmp_path / "noext"  # a file without a suffix: no folder for the video
    noext.write_bytes(b"mine too")
    msg = error_line(demo, "--video-input", video, "--output", str(noext), opts=_no_model(tmp_path))
    assert msg == "ERROR: --output={!r} is a file: give a folder (created if missing).".format(
        str(noext)
    )
    assert mine.read_bytes() == b"mine" and noext.read_bytes() == b"mine too"


def test_several_images_need_a_folder(demo, photos, tmp_path):
    folder, names = photos
    out = tmp_path / "new.jpg"
    msg = error_line(demo, "--input", folder, "--output", str(out), opts=_no_model(tmp_path))
    assert msg == (
        "ERROR: --output={!r} is an image name, but there are {} input images: give a folder "
        "(created if missing).".format(str(out), len(names))
    )
    assert not out.exists()


def test_video_output_is_mp4_or_avi(demo, tmp_path):
    """Other suffixes are refused before the model loads; a file OpenCV cannot write: one line."""
    video = _video(tmp_path / "clip.avi")
    out = tmp_path / "out" / "frame.png"
    msg = error_line(demo, "--video-input", video, "--output", str(out), opts=_no_model(tmp_path))
    assert msg == (
        "ERROR: --output={!r}: a video is written to a .mp4 or .avi file, or into a folder (a name "
        "without a suffix).".format(str(out))
    )
    assert not out.parent.exists()
    long_name = str(tmp_path / ("x" * 300 + ".mp4"))  # too long a file name for the system
    msg = error_line(demo, "--video-input", video, "--output", long_name)
    assert (
        msg == "ERROR: Cannot write the video {!r} (--output): OpenCV cannot write the file "
        "there.".format(long_name)
    )
    assert run_demo(demo, "--video-input", video, "--output", str(tmp_path / "c.AVI")) == [
        str(tmp_path / "c.AVI")
    ]


def test_output_never_overwrites_an_input(demo, tmp_path):
    image = _write_image(tmp_path / "a.png", 40, 56)
    for out in (str(tmp_path), image):
        msg = error_line(demo, "--input", image, "--output", out, opts=_no_model(tmp_path))
        assert msg == (
            "ERROR: --output: {!r} would overwrite the input {!r}; give another "
            "--output.".format(image, image)
        )
    video = _video(tmp_path / "v.mp4")
    msg = error_line(
        demo, "--video-input", video, "--output", str(tmp_path), opts=_no_model(tmp_path)
    )
    assert "would overwrite the input {!r}".format(video) in msg
    assert image_size(image) == (40, 56, 3)


def test_panoptic_without_class_names(demo, photos, tmp_path):
    """A test dataset not registered, or none: the panoptic segments drawn with their class ids
    as names (Metadata not registered), one warning."""
    folder, names = photos
    segments = [
        {"id": 1, "category_id": 2, "isthing": True, "score": 0.9},
        {"id": 2, "category_id": 3, "isthing": False},
    ]
    named = demo.with_class_names(Metadata(name="test_demo_ids_only"), segments)
    assert named.thing_classes == ["0", "1", "2"]
    assert named.stuff_classes == ["things", "1", "2", "3"]  # stuff 0: the things merged
    assert "test_demo_ids_only" not in MetadataCatalog.list()
    video = _video(tmp_path / "clip.avi")
    records = _Records()
    logging.getLogger("panet_d2").addHandler(records)
    try:
        for dataset, said in [
            ('("test_demo_not_registered",)', "Dataset 'test_demo_not_registered' has no"),
            ("()", "The config names no test dataset:"),
        ]:
            opts = SMALL + ["DATASETS.TEST", dataset]
            out = tmp_path / "vis{}".format(len(dataset))
            written = run_demo(demo, "--input", folder, "--output", str(out), opts=opts)
            assert [image_size(p) for p in written] == [
                image_size(os.path.join(folder, n)) for n in names
            ]
            written = run_demo(demo, "--video-input", video, "--output", str(out), opts=opts)
            assert written == [str(out / "clip.mp4")]
            warned = [m for m in records.messages if m.startswith(said)]
            assert len(warned) == 1 and warned[0].endswith("drawn with class ids as names."), warned
    finally:
        logging.getLogger("panet_d2").removeHandler(records)


def test_folder_lists_image_files_of_pil_formats(demo, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "d.jpg").mkdir()  # a folder, not an image
    (folder / "notes.txt").write_text("not an image")
    names = ["a.jfif", "b.ppm", "c.pgm", "e.pnm", "f.jpe"]
    for i, name in enumerate(names):
        bgr = np.random.RandomState(i).randint(0, 256, (40, 56, 3)).astype(np.uint8)
        image = Image.fromarray(bgr[..., ::-1])
        image = image.convert("L") if name.endswith(".pgm") else image
        image.save(str(folder / name), format="JPEG" if name[-4:] in ("jfif", ".jpe") else "PPM")
    with logged_messages("panet_d2.demo") as logged:
        assert demo.expand_inputs([str(folder)]) == [str(folder / n) for n in names]
    assert logged == [
        f"--input {str(folder)!r}: 5 image(s) read; its 1 subfolder(s) are not (give them too)."
    ]
    written = run_demo(demo, "--input", str(folder), "--output", str(tmp_path / "vis"))
    # OpenCV writes no .jfif, and .pgm in gray only: those get .png added
    expected = ["a.jfif.png", "b.ppm", "c.pgm.png", "e.pnm", "f.jpe"]
    assert written == [str(tmp_path / "vis" / n) for n in expected]
    assert all(image_size(p) == (40, 56, 3) for p in written)
