#!/usr/bin/env python3
# -*- coding: utf-8 -*-
"""
PANet demo, in the manner of Detectron2's demo/demo.py and demo/predictor.py: runs a trained
model on images, a video or the webcam and draws the predictions (instances; the panoptic
segmentation when the model outputs "panoptic_seg").

    python3 demo.py --config-file configs/quick_schedules/panet_R_18_synth_instance.yaml \
        --input /path/to/images/ more/*.jpg one.png --output out_dir/ \
        --opts MODEL.WEIGHTS output/quick_schedules/panet_R_18_synth_instance/model_final.pth

--input takes image files, glob patterns and folders (their images); --output is a folder (for
several inputs; created if needed) or a file (one input). Without --output the pictures are shown
in a window.
"""
import argparse
import glob
import os
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np
import torch
import tqdm

import detectron2.data.transforms as T
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine.defaults import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import ColorMode, Visualizer

# Importing panet_d2 registers its backbone, heads, meta-architectures and datasets.
from panet_d2 import PANetCheckpointer, add_panet_config
from panet_d2.errors import CheckpointError as CheckpointShapeError
from panet_d2.engine import (
    CheckpointError,
    ImageLoadError,
    InputError,
    adapt_config_to_machine,
    clean_error_message,
)

# constants
WINDOW_NAME = "PANet detections"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class PANetPredictor(DefaultPredictor):
    """
    Detectron2's :class:`DefaultPredictor` (one BGR image in, the model's outputs out) whose
    weights are loaded with :class:`PANetCheckpointer` (clear errors for a checkpoint that does
    not exist or does not fit).
    """

    def __init__(self, cfg):
        # DefaultPredictor.__init__, with PANetCheckpointer
        self.cfg = cfg.clone()  # cfg can be modified by model
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        try:
            PANetCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        except (FileNotFoundError, CheckpointShapeError, RuntimeError) as e:
            raise CheckpointError(str(e)) from e
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        assert self.input_format in ["RGB", "BGR"], self.input_format


class VisualizationDemo:
    """Runs a :class:`PANetPredictor` and draws its predictions with Detectron2's Visualizer."""

    def __init__(self, cfg, instance_mode=ColorMode.IMAGE):
        self.metadata = MetadataCatalog.get(
            cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
        )
        self.cpu_device = torch.device("cpu")
        self.instance_mode = instance_mode
        self.predictor = PANetPredictor(cfg)

    def run_on_image(self, image):
        """
        Args:
            image (np.ndarray): an image of shape (H, W, C) (in BGR order).

        Returns:
            predictions (dict): the output of the model.
            vis_output (VisImage): the visualized image output.
        """
        vis_output = None
        predictions = self.predictor(image)
        # Convert image from OpenCV BGR format to Matplotlib RGB format.
        image = image[:, :, ::-1]
        visualizer = Visualizer(image, self.metadata, instance_mode=self.instance_mode)
        if "panoptic_seg" in predictions:
            panoptic_seg, segments_info = predictions["panoptic_seg"]
            vis_output = visualizer.draw_panoptic_seg_predictions(
                panoptic_seg.to(self.cpu_device), segments_info
            )
        else:
            if "sem_seg" in predictions:
                vis_output = visualizer.draw_sem_seg(
                    predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
                )
            if "instances" in predictions:
                instances = predictions["instances"].to(self.cpu_device)
                vis_output = visualizer.draw_instance_predictions(predictions=instances)
        return predictions, vis_output

    def run_on_video(self, video):
        """
        Visualizes predictions on frames of a video (a cv2.VideoCapture: file or webcam).

        Yields:
            ndarray: BGR visualizations of each video frame.
        """
        video_visualizer = VideoVisualizer(self.metadata, self.instance_mode)
        while video.isOpened():
            success, frame = video.read()
            if not success:
                break
            predictions = self.predictor(frame)
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if "panoptic_seg" in predictions:
                panoptic_seg, segments_info = predictions["panoptic_seg"]
                vis_frame = video_visualizer.draw_panoptic_seg_predictions(
                    rgb, panoptic_seg.to(self.cpu_device), segments_info
                )
            elif "instances" in predictions:
                instances = predictions["instances"].to(self.cpu_device)
                vis_frame = video_visualizer.draw_instance_predictions(rgb, instances)
            elif "sem_seg" in predictions:
                vis_frame = video_visualizer.draw_sem_seg(
                    rgb, predictions["sem_seg"].argmax(dim=0).to(self.cpu_device)
                )
            else:
                vis_frame = None
            # Converts Matplotlib RGB format to OpenCV BGR format
            yield frame if vis_frame is None else cv2.cvtColor(
                vis_frame.get_image(), cv2.COLOR_RGB2BGR
            )


def setup_cfg(args):
    # load config from file and command-line arguments
    if not os.path.isfile(args.config_file):
        raise InputError(
            "Config file {!r} (--config-file) does not exist.".format(args.config_file)
        )
    cfg = get_cfg()
    add_panet_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    # Set score_threshold for builtin models
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    notes = adapt_config_to_machine(cfg)  # CPU when CUDA is not available
    cfg.freeze()
    return cfg, notes


def get_parser():
    parser = argparse.ArgumentParser(description="PANet demo for panet_d2 configs")
    parser.add_argument(
        "--config-file",
        default="configs/quick_schedules/panet_R_18_synth_instance.yaml",
        metavar="FILE",
        help="path to config file",
    )
    parser.add_argument("--webcam", action="store_true", help="Take inputs from webcam.")
    parser.add_argument("--video-input", help="Path to video file.")
    parser.add_argument(
        "--input",
        nargs="+",
        help="Input images: files, glob patterns such as 'directory/*.jpg', or folders",
    )
    parser.add_argument(
        "--output",
        help="A file or directory to save output visualizations. "
        "If not given, will show output in an OpenCV window.",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="Minimum score for instance predictions to be shown",
    )
    parser.add_argument(
        "--opts",
        help="Modify config options using the command-line 'KEY VALUE' pairs",
        default=[],
        nargs=argparse.REMAINDER,
    )
    return parser


def expand_inputs(inputs):
    """
    Image paths from --input: files, glob patterns and folders (their image files, sorted).

    Raises:
        InputError: an input that is neither an existing file, a folder with images, nor a
            pattern that matches files.
    """
    paths = []
    for item in inputs:
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, n)
                for n in os.listdir(item)
                if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(item, n))
            )
            if not found:
                raise InputError("Input folder {!r} contains no image files.".format(item))
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise InputError("Input pattern {!r} matches no files.".format(item))
            paths += found
        else:
            raise InputError("Input image {!r} does not exist.".format(item))
    return paths


def output_paths(paths, output):
    """
    The file each input's picture is saved to: ``output`` itself for one input and a file name
    with an extension; else files named as the inputs in the folder ``output`` (created).
    """
    as_dir = (
        os.path.isdir(output)
        or output.endswith(("/", os.sep))
        or not os.path.splitext(output)[1]
        or len(paths) > 1
    )
    if not as_dir:
        if os.path.dirname(output):
            os.makedirs(os.path.dirname(output), exist_ok=True)
        return [output]
    if os.path.isfile(output):
        raise InputError(
            "--output {!r} is a file but there are {} inputs: give a folder.".format(
                output, len(paths)
            )
        )
    os.makedirs(output, exist_ok=True)
    out, used = [], set()
    for p in paths:
        name = os.path.basename(p)
        stem, ext = os.path.splitext(name)
        k = 1
        while name in used:  # same file name from two folders
            name = "{}_{}{}".format(stem, k, ext)
            k += 1
        used.add(name)
        out.append(os.path.join(output, name))
    return out


def _read_image(path):
    try:
        # use PIL, to be consistent with evaluation
        return read_image(path, format="BGR")
    except Exception as e:
        raise ImageLoadError(
            "Cannot read input image {!r}: {}: {}".format(path, type(e).__name__, e)
        ) from e


def test_opencv_video_format(codec, file_ext):
    with tempfile.TemporaryDirectory(prefix="video_format_test") as dir:
        filename = os.path.join(dir, "test_file" + file_ext)
        writer = cv2.VideoWriter(
            filename=filename,
            fourcc=cv2.VideoWriter_fourcc(*codec),
            fps=float(30),
            frameSize=(10, 10),
            isColor=True,
        )
        [writer.write(np.zeros((10, 10, 3), np.uint8)) for _ in range(30)]
        writer.release()
        return os.path.isfile(filename)


def run(args):
    """
    Runs the demo for parsed arguments.

    Returns:
        list[str]: the files written (empty when showing in a window).
    """
    setup_logger(name="fvcore")
    logger = setup_logger()
    logger.info("Arguments: " + str(args))
    cfg, notes = setup_cfg(args)
    for note in notes:
        logger.warning(note)
    written = []

    if args.input:
        paths = expand_inputs(args.input)
        outputs = output_paths(paths, args.output) if args.output else [None] * len(paths)
        for path in paths:  # fail before loading the model if an input is unreadable
            if not os.access(path, os.R_OK):
                raise ImageLoadError("Input image {!r} is not readable.".format(path))
        demo = VisualizationDemo(cfg)
        for path, out_filename in tqdm.tqdm(
            list(zip(paths, outputs)), disable=not args.output, desc="demo"
        ):
            img = _read_image(path)
            start_time = time.time()
            predictions, visualized_output = demo.run_on_image(img)
            logger.info(
                "{}: {} in {:.2f}s".format(
                    path,
                    (
                        "detected {} instances".format(len(predictions["instances"]))
                        if "instances" in predictions
                        else "finished"
                    ),
                    time.time() - start_time,
                )
            )
            if out_filename:
                visualized_output.save(out_filename)
                written.append(out_filename)
            else:
                cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
                cv2.imshow(WINDOW_NAME, visualized_output.get_image()[:, :, ::-1])
                if cv2.waitKey(0) == 27:
                    break  # esc to quit
    elif args.webcam:
        if args.output:
            raise InputError("--output is not supported with --webcam.")
        demo = VisualizationDemo(cfg)
        cam = cv2.VideoCapture(0)
        for vis in tqdm.tqdm(demo.run_on_video(cam)):
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, vis)
            if cv2.waitKey(1) == 27:
                break  # esc to quit
        cam.release()
        cv2.destroyAllWindows()
    elif args.video_input:
        if not os.path.isfile(args.video_input):
            raise InputError("Video file {!r} does not exist.".format(args.video_input))
        demo = VisualizationDemo(cfg)
        video = cv2.VideoCapture(args.video_input)
        if not video.isOpened():
            raise ImageLoadError("Cannot open video {!r}.".format(args.video_input))
        width = int(video.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
        frames_per_second = video.get(cv2.CAP_PROP_FPS) or 30.0
        num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
        basename = os.path.basename(args.video_input)
        codec, file_ext = (
            ("x264", ".mkv") if test_opencv_video_format("x264", ".mkv") else ("mp4v", ".mp4")
        )
        if codec == "mp4v":
            warnings.warn("x264 codec not available, switching to mp4v")
        if args.output:
            if os.path.isdir(args.output):
                output_fname = os.path.join(args.output, basename)
                output_fname = os.path.splitext(output_fname)[0] + file_ext
            else:
                output_fname = args.output
            if os.path.isfile(output_fname):
                raise InputError("Output video {!r} already exists.".format(output_fname))
            output_file = cv2.VideoWriter(
                filename=output_fname,
                # some installation of opencv may not support x264 (due to its license),
                # you can try other format (e.g. MPEG)
                fourcc=cv2.VideoWriter_fourcc(*codec),
                fps=float(frames_per_second),
                frameSize=(width, height),
                isColor=True,
            )
        for vis_frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames):
            if args.output:
                output_file.write(vis_frame)
            else:
                cv2.namedWindow(basename, cv2.WINDOW_NORMAL)
                cv2.imshow(basename, vis_frame)
                if cv2.waitKey(1) == 27:
                    break  # esc to quit
        video.release()
        if args.output:
            output_file.release()
            written.append(output_fname)
        else:
            cv2.destroyAllWindows()
    else:
        raise InputError("Nothing to do: give --input, --video-input or --webcam.")
    return written


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        return run(args)
    except InputError as e:
        if argv is not None:  # called from Python: let the caller handle it
            raise
        sys.exit("ERROR: " + clean_error_message(e))


if __name__ == "__main__":
    main()  # pragma: no cover
