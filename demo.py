#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
Demo: Detectron2's DefaultPredictor and Visualizer on images (files, glob patterns, folders), a
video or the webcam, for a yacs (.yaml) or LazyConfig (.py) config; options as Detectron2's demo.
--output is a folder, or a file for one image or a video (.mp4, .avi); without it the pictures are
shown in a window, which needs OpenCV with GUI support. README has the commands.

The weights (MODEL.WEIGHTS, or train.init_checkpoint of a LazyConfig) are required and load with
PANetCheckpointer: nothing in the file is run, and every tensor of the model must come from it.
Per image it logs what it found, as Detectron2's demo: "detected 3 instances", and of a panoptic
model "4 panoptic segments (3 things, 1 stuff)" (none: nothing above --confidence-threshold).
An input error is one "ERROR: ..." line and exit code 2; an image that cannot be read is one
such line, the others are still shown, and the demo exits with 2 at the end (the exit codes:
docs/reliability.md).
"""

import panet_d2  # noqa: F401  isort: skip  (first: Detectron2 then imports without warnings)

import argparse
import contextlib
import functools
import glob
import logging
import os
import sys
import time

import cv2
import numpy as np
from omegaconf import OmegaConf

from detectron2.config import CfgNode, get_cfg, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.logger import log_first_n, setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import Visualizer

from panet_d2 import PANetCheckpointer  # registers its models and datasets
from panet_d2.checkpoint import check_weights_file
from panet_d2.config import check_no_command_flags, instantiate_model, load_config_file
from panet_d2.data import PanopticLabelSpace
from panet_d2.data.image_io import check_model_input_side, read_image
from panet_d2.engine import adapt_config_to_machine, one_line_errors
from panet_d2.engine.checks import check_config, check_output_dir
from panet_d2.errors import CheckpointError, ImageLoadError, InputError

logger = logging.getLogger("panet_d2.demo")
# read by PIL; written by OpenCV (.pbm, .pgm: gray only, .jfif: not at all; see image_name)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_EXTENSIONS += (".gif", ".pbm", ".pgm", ".ppm", ".pnm")
# the keys that take --confidence-threshold (ROI heads, RetinaNet, panoptic merges)
SCORE_KEYS = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.RETINANET.SCORE_THRESH_TEST")
SCORE_KEYS += ("MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH",)
LAZY_SCORE_KEYS = (
    "model.roi_heads.box_predictor.test_score_thresh",
    "model.test_score_thresh",
    "model.combine_instances_score_thresh",
)


def get_parser():
    p = argparse.ArgumentParser(description="panet_d2 demo")
    p.add_argument("--config-file", metavar="FILE", required=True, help="a .yaml or a .py")
    p.add_argument("--webcam", action="store_true", help="read frames from the webcam")
    p.add_argument("--video-input", help="a video file")
    p.add_argument("--input", nargs="+", help="image files, glob patterns or folders")
    p.add_argument("--output", help="a folder or a file; default: show in a window")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        help="min instance score (default 0.5, unless --opts sets the score keys themselves)",
    )
    p.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config changes: KEY VALUE pairs (.yaml) or key=value (.py)",
    )
    return p


class Predictor(DefaultPredictor):
    """DefaultPredictor whose weights load with PANetCheckpointer (nothing run from the file,
    every tensor of the model from it); Detectron2's DefaultPredictor otherwise (its constructor
    without its own checkpointer)."""

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        PANetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        assert self.input_format in ["RGB", "BGR"], self.input_format


class LazyPredictor(DefaultPredictor):
    """DefaultPredictor's __call__ on a LazyConfig model (its constructor takes a yacs config)."""

    def __init__(self, model, aug, input_format, metadata, device):
        self.cfg = CfgNode({"MODEL": {"DEVICE": device}})  # all of cfg that __call__ reads
        self.model, self.aug, self.input_format, self.metadata = model, aug, input_format, metadata


def _check_weights(path, key):
    if not path:
        raise CheckpointError(
            "{} is empty: the demo shows a trained model; give its checkpoint.".format(key)
        )
    check_weights_file(path, key)
    return path


def _select(cfg, key):
    return functools.reduce(getattr, key.split("."), cfg)


def _say_replaced(values, keys, score):
    """Warns for each score key of ``values`` (``keys``: SCORE_KEYS or LAZY_SCORE_KEYS) that the
    config sets to other than Detectron2's default: --confidence-threshold's default replaces it."""
    defaults = dict(zip(keys, (_select(get_cfg(), k) for k in SCORE_KEYS)))
    for key, value in values.items():
        if value not in (defaults[key], score):
            logger.warning(
                f"{key}={value} in the config: the demo shows the instances scored >= {score} "
                f"(--confidence-threshold's default); to keep {value}, give "
                f"--confidence-threshold {value}."
            )


def build_predictor(args):
    """A DefaultPredictor (yacs config) or LazyPredictor (LazyConfig) for the parsed arguments."""
    given = {str(o).split("=", 1)[0] for o in args.opts} & set(SCORE_KEYS + LAZY_SCORE_KEYS)
    if given and args.confidence_threshold is not None:
        raise InputError(
            f"--confidence-threshold {args.confidence_threshold} and {sorted(given)[0]} (--opts) "
            "both set the lowest instance score shown: give one of them."
        )
    score = 0.5 if args.confidence_threshold is None else args.confidence_threshold
    cfg = load_config_file(args.config_file, args.opts)
    notes = adapt_config_to_machine(cfg)
    for note in notes:
        logger.warning(note)
    if isinstance(cfg, CfgNode):
        check_config(cfg, train=False)  # as train_net.py --eval-only
        _check_weights(cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS")
        if args.confidence_threshold is None and not given:
            _say_replaced({k: _select(cfg, k) for k in SCORE_KEYS}, SCORE_KEYS, score)
        if cfg.TEST.AUG.ENABLED:
            logger.warning(
                "TEST.AUG.ENABLED=True: the demo shows the plain model's output, without test-time "
                "augmentation (train_net.py --eval-only evaluates it)."
            )
        if not given:  # (score keys given in --opts are used as given)
            cfg.MODEL.RETINANET.SCORE_THRESH_TEST = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score
            cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = score
        return Predictor(cfg)
    weights = _check_weights(
        OmegaConf.select(cfg, "train.init_checkpoint", default=""), "train.init_checkpoint"
    )
    if args.confidence_threshold is None and not given:
        values = {k: OmegaConf.select(cfg, k) for k in LAZY_SCORE_KEYS}
        _say_replaced({k: v for k, v in values.items() if v is not None}, LAZY_SCORE_KEYS, score)
    for key in (k for k in LAZY_SCORE_KEYS if OmegaConf.select(cfg, k) is not None and not given):
        OmegaConf.update(cfg, key, score)
    device = cfg.train.device
    model = instantiate_model(cfg).to(device).eval()
    PANetCheckpointer(model).load(weights)
    augs = OmegaConf.select(cfg, "dataloader.test.mapper.augmentations")
    augs = instantiate(augs) if augs else [T.ResizeShortestEdge(800, 1333)]
    aug = augs[0] if len(augs) == 1 else T.AugmentationList(augs)
    # UPSTREAM-WORKAROUND augmentation-list-get-transform: Detectron2 0.6 DefaultPredictor calls
    # aug.get_transform, which its AugmentationList has not.
    if len(augs) > 1:
        aug.get_transform = lambda image: aug(T.AugInput(image))
    names = OmegaConf.select(cfg, "dataloader.test.dataset.names")
    names = [names] if isinstance(names, str) else names
    metadata = MetadataCatalog.get(names[0]) if names else None
    input_format = OmegaConf.select(cfg, "model.input_format", default="BGR")
    return LazyPredictor(model, aug, input_format, metadata, device)


def found(predictions):
    """
    What the model found, as Detectron2's demo says it: "detected 3 instances" (those with a score
    of at least --confidence-threshold), and of a panoptic model also "4 panoptic segments (3
    things, 1 stuff)"; of a semantic model "2 classes in the semantic segmentation".
    """
    parts = []
    if "instances" in predictions:
        parts.append("detected {} instances".format(len(predictions["instances"])))
    if "panoptic_seg" in predictions:
        segments = predictions["panoptic_seg"][1]
        things = sum(1 for s in segments if s["isthing"])
        parts.append(
            "{} panoptic segments ({} things, {} stuff)".format(
                len(segments), things, len(segments) - things
            )
        )
    elif "sem_seg" in predictions:
        classes = predictions["sem_seg"].argmax(dim=0).unique().numel()
        parts.append("{} classes in the semantic segmentation".format(classes))
    return ", ".join(parts)


def with_class_names(metadata, segments):
    """`metadata` if it names the thing and stuff classes, else a Metadata (not registered) naming
    those of the panoptic `segments` by their ids (Panoptic FPN's separated convention: stuff 0 is
    the things merged), with one warning."""
    if all(metadata.get(k) is not None for k in ("thing_classes", "stuff_classes")):
        return metadata
    what = "Dataset {!r} has no thing_classes or stuff_classes (is it registered?)"
    what = "The config names no test dataset" if metadata.name == "__unused" else what
    log_first_n(
        logging.WARNING,
        what.format(metadata.name) + ": the panoptic segments are drawn with class ids as names.",
        name=logger.name,
        key="message",
    )
    top = [max([s["category_id"] for s in segments if s["isthing"] == t] or [0]) for t in (1, 0)]
    return Metadata(
        name=metadata.name,
        thing_classes=[str(i) for i in range(top[0] + 1)],
        stuff_classes=["things"] + [str(i) for i in range(1, top[1] + 1)],
    )


def draw(rgb, predictions, metadata, video_visualizer=None):
    """The predictions drawn on an RGB image with Visualizer (VideoVisualizer for video frames)."""
    if "panoptic_seg" in predictions:
        metadata = with_class_names(metadata, predictions["panoptic_seg"][1])
        if video_visualizer:
            video_visualizer.metadata = metadata
    vis = video_visualizer or Visualizer(rgb, metadata)
    frame = (rgb,) if video_visualizer else ()
    if "panoptic_seg" in predictions:  # ids in Panoptic FPN's "separated" convention
        seg, segments = predictions["panoptic_seg"]
        if metadata.get("stuff_dataset_id_to_contiguous_id") is not None:
            labels = PanopticLabelSpace.from_metadata(metadata)  # to the dataset's convention
            segments = (
                segments if labels.is_separated else labels.segments_info_to_dataset(segments)
            )
        out = vis.draw_panoptic_seg_predictions(*frame, seg.cpu(), segments)
    elif "instances" in predictions:
        out = vis.draw_instance_predictions(*frame, predictions["instances"].to("cpu"))
    else:
        out = vis.draw_sem_seg(*frame, predictions["sem_seg"].argmax(dim=0).cpu())
    return out.get_image()


def read_bgr(path):
    """An image as BGR uint8, by panet_d2's reader of training and evaluation (EXIF orientation
    applied, 16-bit scaled to 8 bit, 32-bit refused with one line)."""
    return read_image(path, format="BGR", what="input image")


def expand_inputs(items):
    """The image files of --input: files, glob patterns and folders (their images, sorted)."""
    paths = []
    for item in map(os.path.expanduser, items):
        if os.path.isdir(item):
            entries = [os.path.join(item, n) for n in sorted(os.listdir(item))]
            found = [
                p for p in entries if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)
            ]
            folders = sum(map(os.path.isdir, entries))
            if folders:
                logger.warning(
                    "--input %r: %d image(s) read; its %d subfolder(s) are not (give them too).",
                    item,
                    len(found),
                    folders,
                )
        elif os.path.isfile(item):  # as it is, also a name such as a[1].png
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
        if not found:
            raise InputError(
                "Input {!r} (--input): no such image, folder with images, or "
                "matching files.".format(item)
            )
        paths += found
    return paths


def image_name(path):
    """`path`, with ".png" added where OpenCV cannot write a color picture of its suffix."""
    ext = os.path.splitext(path)[1].lower()
    color = ext not in ("", ".pbm", ".pgm") and cv2.haveImageWriter("x" + ext)
    return path if color else path + ".png"


def make_folder_of(output):
    """Creates the folder of the file `output` (--output); InputError if it cannot be written."""
    check_output_dir(os.path.dirname(output) or ".", "--output={!r}: its folder".format(output))


def check_not_inputs(outputs, inputs):
    inputs = {os.path.realpath(p): p for p in inputs}
    for out in (o for o in outputs if os.path.realpath(o) in inputs):
        raise InputError(
            "--output: {!r} would overwrite the input {!r}; give another --output.".format(
                out, inputs[os.path.realpath(out)]
            )
        )


def output_files(paths, output):
    """Where each picture goes: `output` for one input given a file name; else in that folder,
    named as the inputs, every name prefixed with its index "{i}_" where two would be the same."""
    if len(paths) == 1 and not os.path.isdir(output) and os.path.splitext(output)[1]:
        if image_name(output) != output:  # not written under another name
            raise InputError(
                "--output={!r}: OpenCV writes no color picture of that suffix: give a .png or "
                ".jpg name, or a folder.".format(output)
            )
        make_folder_of(output)
        outputs = [output]
    else:
        ext = os.path.splitext(output)[1].lower()
        image = ext in IMAGE_EXTENSIONS or ext and cv2.haveImageWriter("x" + ext)
        if image and not os.path.exists(output):
            raise InputError(
                "--output={!r} is an image name, but there are {} input images: give a folder "
                "(created if missing).".format(output, len(paths))
            )
        check_output_dir(output, "--output")  # several pictures, or a name without a suffix
        names = [os.path.basename(image_name(p)) for p in paths]
        if len({n.lower() for n in names}) < len(names):  # e.g. img.png of two folders
            names = ["{}_{}".format(i, n) for i, n in enumerate(names)]  # unique: i up to the _
        outputs = [os.path.join(output, n) for n in names]
    check_not_inputs(outputs, paths)
    return outputs


def video_output(output, name):
    """The video file written for --output: `output` (.mp4, .avi), else `name`.mp4 in that folder;
    its folder created."""
    if os.path.isdir(output) or not os.path.splitext(output)[1]:
        check_output_dir(output, "--output")
        output = os.path.join(output, os.path.splitext(os.path.basename(name))[0] + ".mp4")
    elif not output.lower().endswith((".mp4", ".avi")):
        raise InputError(
            "--output={!r}: a video is written to a .mp4 or .avi file, or into a folder (a name "
            "without a suffix).".format(output)
        )
    make_folder_of(output)
    check_not_inputs([output], [name])
    return output


def show(rgb, wait_ms):
    """Shows a picture in a window; True when Esc is pressed."""
    try:
        cv2.imshow("panet_d2 demo", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except cv2.error:
        raise InputError(
            "OpenCV cannot open a window here (opencv-python-headless, or no display):"
            " pass --output FOLDER_OR_FILE, or install opencv-python."
        ) from None
    return cv2.waitKey(wait_ms) == 27


@contextlib.contextmanager
def removing_new_empty_folders(output):
    """The folders of ``output`` (--output) that the block creates are removed again if empty at
    its end (e.g. a webcam that gives no frame, or no input image read: nothing written)."""
    new, path = [], os.path.abspath(output) if output else None
    while path and not os.path.lexists(path) and path != os.path.dirname(path):
        new.append(path)
        path = os.path.dirname(path)
    try:
        yield
    finally:
        for folder in new:  # the deepest first
            try:
                if os.path.isdir(folder) and not os.path.islink(folder) and not os.listdir(folder):
                    os.rmdir(folder)
            except OSError:
                pass


def run(args):
    """Runs the demo; returns the files written. An image that cannot be read is logged as one
    "ERROR:" line and skipped; then :class:`ImageLoadError` is raised at the end."""
    with removing_new_empty_folders(args.output):
        return _run(args)


def _run(args):
    video, score = args.video_input, args.confidence_threshold
    sources = {"--input": args.input, "--video-input": video, "--webcam": args.webcam}
    sources = [name for name, value in sources.items() if value]
    if not sources:
        raise InputError("Nothing to do: give --input, --video-input or --webcam.")
    if len(sources) > 1:
        raise InputError(f"{' and '.join(sources)}: give one of them (each is a source of images).")
    if score is not None and not 0.0 <= score <= 1.0:  # NaN too
        raise InputError(
            "--confidence-threshold {}: must be a number in [0, 1] (the lowest instance score "
            "shown).".format(args.confidence_threshold)
        )
    if video and not args.input and not os.path.isfile(video):
        what = "is not a regular file" if os.path.exists(video) else "does not exist"
        raise InputError("Video file {!r} (--video-input) {}.".format(video, what))
    check_no_command_flags(args.opts, args.config_file)  # (e.g. --output after --opts)
    if not args.output:
        show(np.zeros((1, 1, 3), np.uint8), 1)  # fails now, before the model loads, if headless
    paths = expand_inputs(args.input) if args.input else []
    outputs = output_files(paths, args.output) if paths and args.output else [None] * len(paths)
    video_out = video_output(args.output, video or "webcam") if args.output and not paths else None
    predictor = build_predictor(args)
    metadata = getattr(predictor, "metadata", None) or MetadataCatalog.get("__unused")
    failed = []
    for path, out in zip(paths, outputs):
        try:
            image, start = read_bgr(path), time.time()
            if isinstance(predictor.aug, T.ResizeShortestEdge):  # (a LazyConfig's: any)
                transform = predictor.aug.get_transform(image)  # as DefaultPredictor gets it
                new = getattr(transform, "new_h", None), getattr(transform, "new_w", None)
                check_model_input_side(image.shape if None in new else new, f"input image {path!r}")
        except ImageLoadError as e:  # reported, and the others are shown
            if len(paths) == 1:
                raise
            print("ERROR: " + " ".join(str(e).split()), file=sys.stderr)
            failed.append(" ".join(str(e).split()))
            continue
        predictions = predictor(image)
        logger.info("%s: %s in %.2fs", path, found(predictions), time.time() - start)
        picture = draw(image[:, :, ::-1], predictions, metadata)
        if out and not cv2.imwrite(out, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise InputError("Cannot write the picture {!r} (--output).".format(out))
        if not out and show(picture, 0):
            break
    if failed:
        raise ImageLoadError(
            "{} of {} input images could not be read (the others were shown); the first: "
            "{}".format(len(failed), len(paths), failed[0])
        )
    return [o for o in outputs if o] if paths else run_video(args, predictor, metadata, video_out)


def run_video(args, predictor, metadata, out):
    capture, writer = cv2.VideoCapture(args.video_input or 0), None
    name = args.video_input or "webcam"
    if not capture.isOpened():
        raise ImageLoadError(f"Cannot open the video {name!r}.")
    visualizer = VideoVisualizer(metadata)
    try:
        ok, frame = capture.read()
        if not ok:
            what = "not a video, or in a format that OpenCV cannot decode here"
            what = "the camera gave none" if name == "webcam" else what
            raise ImageLoadError(f"Cannot read a frame of the video {name!r}: {what}.")
        while ok:  # until the video ends, Esc in the window, or Ctrl-C
            picture = draw(frame[:, :, ::-1], predictor(frame), metadata, visualizer)
            if not out and show(picture, 1):
                break
            if out and writer is None:
                codec = cv2.VideoWriter_fourcc(
                    *("MJPG" if out.lower().endswith(".avi") else "mp4v")
                )
                fps, size = capture.get(cv2.CAP_PROP_FPS) or 30.0, picture.shape[1::-1]
                writer = cv2.VideoWriter(out, codec, fps, size)
                if not writer.isOpened():
                    raise InputError(
                        "Cannot write the video {!r} (--output): OpenCV cannot write the file "
                        "there.".format(out)
                    )
            if out:
                writer.write(cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
            ok, frame = capture.read()
    except KeyboardInterrupt:
        logger.info("Stopped by Ctrl-C.")
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return [out] if writer is not None else []


def main(argv=None):
    args = get_parser().parse_args(argv)
    for name in ("fvcore", "detectron2", "panet_d2"):
        setup_logger(name=name)
    logger.info("Arguments: %s", args)
    with one_line_errors():
        return run(args)


if __name__ == "__main__":
    main()
