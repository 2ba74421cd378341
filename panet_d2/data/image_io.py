"""The image reader of panet_d2 and Detectron2's ``DatasetMapper`` reading with it."""

import copy
import functools
import logging
import numbers
import os

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.modeling import META_ARCH_REGISTRY, PanopticFPN, SemanticSegmentor
from detectron2.utils.file_io import PathManager

from ..errors import DatasetError, ImageLoadError, InputError

logger = logging.getLogger(__name__)
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_FRAME_FORMATS = ("GIF", "TIFF", "PNG", "WEBP")  # PIL's formats of frames shown one after another
MAX_ASPECT_RATIO = 100  # the longest side of an image that panet_d2 reads, in its shortest sides
# the longest side of an image as the model gets it: twice Detectron2's largest config value (a
# 30000 px test side filled 24 GB, docs/reliability.md)
MAX_SIDE = 8192


def check_model_input_side(shape, what, split="TEST"):
    """An :class:`ImageLoadError` if the image ``what``, of ``shape`` (H, W, ...) as the model
    gets it (resized for ``split``, TRAIN or TEST), has a side longer than :data:`MAX_SIDE`."""
    h, w = shape[:2]
    if max(h, w) > MAX_SIDE:
        raise ImageLoadError(
            f"The {what} is {w}x{h} (width x height) as the model would get it: panet_d2 runs "
            f"images of at most {MAX_SIDE} px a side (larger ones exhaust a machine's memory): "
            f"resize it with INPUT.MIN_SIZE_{split} / MAX_SIZE_{split} (0: not resized), in a "
            "LazyConfig with its mapper's augmentations."
        )


# UPSTREAM-WORKAROUND pil-16-bit-read: Detectron2 0.6 read_image (PIL convert) clips 16-bit pixels:
# a 16-bit grayscale PNG becomes white.
def read_image(file_name, format=None, what="image"):
    """Detectron2's ``read_image`` (same ``format``, HWC, EXIF applied), a 16-bit image scaled to
    8 bit (value / 257, rounded); ``what`` the file is, for the :class:`ImageLoadError`."""
    subject = what[:1].upper() + what[1:]
    if "://" not in str(file_name) and os.path.exists(file_name) and not os.path.isfile(file_name):
        raise ImageLoadError(f"{subject} {file_name!r} is not a regular file.")  # a pipe: a hang
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            w, h = image.size
            # an animation, a multi-page TIFF (not a phone JPEG's MPF images: PIL's "MPO")
            if getattr(image, "n_frames", 1) > 1 and image.format in _FRAME_FORMATS:
                _first_frame_read(str(file_name), what, image.n_frames)
            if min(w, h) < 1 or max(w, h) > MAX_ASPECT_RATIO * min(w, h):
                raise ImageLoadError(
                    f"{subject} {file_name!r} is {w}x{h} (width x height): panet_d2 reads images "
                    f"whose longest side is at most {MAX_ASPECT_RATIO} times the shortest (resized "
                    "to the model's input sizes, this one would be a few pixels across or none): "
                    "crop it or cut it into parts."
                )
            # PIL opens a 16-bit PNG as "I;16" (Pillow >= 10) or "I" (older)
            if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
                gray = np.asarray(ImageOps.exif_transpose(image)).astype(np.uint32)  # in place:
                gray = np.floor_divide(np.add(gray, 128, out=gray), 257, out=gray)  # value / 257
                image = Image.fromarray(gray.astype(np.uint8), mode="L")  # rounded (no ties)
            elif image.mode in ("I", "F"):
                raise ImageLoadError(
                    f"{subject} {file_name!r} has PIL mode {image.mode!r} (32-bit pixels); "
                    "panet_d2 reads 8- and 16-bit images: convert it (e.g. to an 8-bit PNG)."
                )
            else:
                image = ImageOps.exif_transpose(image)
            return utils.convert_PIL_to_numpy(image, format)
    except InputError:
        raise
    # PIL's errors for missing / unreadable files, and for images over its pixel limit
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"Cannot read {what} {file_name!r}: {e}") from e


@functools.lru_cache(maxsize=1024)  # once a file
def _first_frame_read(file_name, what, frames):
    logger.warning(f"The {what} {file_name!r} has {frames} frames: panet_d2 reads the first.")


def _check_label_png(dataset_dict, key, what, modes, rule, palette):
    """A :class:`DatasetError` unless the PNG of record field ``key`` (a ``what``) is of one of
    ``modes`` (else: ``rule``, what it must be; ``palette``, why not a palette PNG) and of the
    record's width and height (``modes`` None: of any mode)."""
    path, subject = dataset_dict[key], what[:1].upper() + what[1:]
    try:
        with PathManager.open(path, "rb") as f:  # the header only
            header = Image.open(f)
            mode, stored = header.mode, header.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"Cannot read {what} {path!r}: {e}") from None
    if modes is not None and mode not in modes:
        why = f" ({palette})." if mode == "P" else "."
        raise DatasetError(f"{subject} {path!r} is of mode {mode!r}: {rule}{why}")
    size = dataset_dict.get("width"), dataset_dict.get("height")
    if None not in size and tuple(stored) != size:
        raise DatasetError(
            f"{subject} {path!r} is {stored[0]}x{stored[1]} (width x height), its image "
            f"{dataset_dict.get('file_name')!r} {size[0]}x{size[1]} (the dataset record's)."
        )


def check_sem_seg_png(dataset_dict, evaluation=False):
    """A :class:`DatasetError` unless the record's semantic label PNG holds one class id a pixel
    (mode L; or, in ``evaluation``, a palette PNG's indices: training reads it as gray levels) of
    the record's width and height (headers read)."""
    rule = "label PNGs hold one 8-bit class id a pixel (mode L)"
    palette = "a palette PNG: training would read its colors' gray levels"
    modes = ("L",) + ("P",) * evaluation
    _check_label_png(dataset_dict, "sem_seg_file_name", "semantic label PNG", modes, rule, palette)


def check_panoptic_png(dataset_dict, evaluation=False):
    """A :class:`DatasetError` unless the record's panoptic PNG is RGB(A) (ids R + 256 G + 256^2 B)
    or, but for ``evaluation`` (panopticapi reads its arrays as they are), a palette of colors, of
    the record's width and height (headers read)."""
    rule = "COCO panoptic PNGs are RGB, a segment id R + 256 G + 256^2 B per pixel (panopticapi's "
    rule += "id2rgb)"
    modes = ("RGB", "RGBA") + ("P",) * (not evaluation)
    palette = "a palette PNG: not in evaluation"
    _check_label_png(dataset_dict, "pan_seg_file_name", "panoptic PNG", modes, rule, palette)


def check_ground_truth_png(dataset_dict, path, what):
    """A :class:`DatasetError` unless the PNG ``path`` (a ``what``) is of the width and height of
    record ``dataset_dict`` (header read)."""
    _check_label_png({**dataset_dict, "ground_truth": path}, "ground_truth", what, None, "", "")


def check_image_size(dataset_dict, image=None):
    """Detectron2's ``check_image_size``, raising a :class:`DatasetError` that names the image,
    both sizes and, for a rotated photo, its EXIF orientation. ``image`` None: the size read
    upright from the file's header (no decoding), for the record's width / height if it has any."""
    if image is not None:
        try:
            return utils.check_image_size(dataset_dict, image)
        except utils.SizeMismatchError:
            pass
    file_name = dataset_dict["file_name"]
    try:
        with PathManager.open(file_name, "rb") as f:
            header = Image.open(f)
            stored, orientation = header.size, header.getexif().get(ExifTags.Base.Orientation)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"Cannot read image {file_name!r}: {e}") from None
    read = stored[::-1] if orientation in _ROTATED else stored
    record = (dataset_dict.get("width"), dataset_dict.get("height"))
    if image is None and (record == (None, None) or tuple(read) == record):
        return
    image_id = f" (image_id {dataset_dict['image_id']!r})" if "image_id" in dataset_dict else ""
    if any(v is not None and not isinstance(v, numbers.Integral) for v in record):
        raise DatasetError(
            f"Image {file_name!r}{image_id}: the width and height of its dataset record, "
            f"{record[0]!r} and {record[1]!r}, must be integers (pixels; the file: {read[0]}x"
            f"{read[1]})."
        )
    msg = f"Image {file_name!r}{image_id} is {read[0]}x{read[1]} (width x height) as read, its "
    msg += f"dataset record says {record[0]}x{record[1]}"
    if orientation in _ROTATED:
        msg += f"; the file is stored {stored[0]}x{stored[1]} with EXIF orientation {orientation}"
        msg += " (a rotated photo, read upright as Detectron2 reads it)"
        if tuple(record) == tuple(stored):
            msg += f": write its upright size {read[0]}x{read[1]} in the dataset's JSON"
    elif orientation not in (None, 1):
        msg += f" (EXIF orientation {orientation})"
    raise DatasetError(msg + ". Fix the width / height of the record, or the image file.")


def check_sem_seg_labels(labels, file_name, num_classes, ignore_value, what):
    """A :class:`DatasetError` unless the integer array ``labels`` (of semantic label PNG
    ``file_name``) holds class ids below ``num_classes`` or ``ignore_value`` only."""
    if labels.dtype == np.uint8:  # a mode L PNG: 2 ms for 1024 x 2048 (np.unique: 20 ms)
        values = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    else:
        values = np.unique(labels)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_value)]
    if bad.size:
        others = f" (and {bad.size - 1} other values out of range)" if bad.size > 1 else ""
        ignore = "no ignore value" if ignore_value is None else f"the ignore value {ignore_value}"
        raise DatasetError(
            f"Semantic label PNG {file_name!r} holds the label {int(bad[0])}{others}: {what} "
            f"allows 0..{num_classes - 1} and {ignore}."
        )


class ImageDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper`` reading with :func:`read_image` and :func:`check_image_size`
    (``DatasetMapper.__call__`` has no hook for the reader, so this one uses its public steps)."""

    @configurable
    def __init__(self, is_train=True, *, sem_seg_classes=None, **kwargs):
        """``sem_seg_classes``: (NUM_CLASSES, IGNORE_VALUE) of a model that trains on the records'
        semantic PNGs, whose labels are then checked (:func:`check_sem_seg_labels`)."""
        super().__init__(is_train, **kwargs)
        self.sem_seg_classes = sem_seg_classes

    @classmethod
    def from_config(cls, cfg, is_train=True):
        ret = super().from_config(cfg, is_train)
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
        # Detectron2's meta-architectures that train on a record's "sem_seg" (and their subclasses)
        reads_sem_seg = isinstance(arch, type) and issubclass(
            arch, (SemanticSegmentor, PanopticFPN)
        )
        if is_train and reads_sem_seg:
            head = cfg.MODEL.SEM_SEG_HEAD
            ret["sem_seg_classes"] = (head.NUM_CLASSES, head.IGNORE_VALUE)
        return ret

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image, labels = self._read_image(dataset_dict), dataset_dict.pop("sem_seg_file_name", None)
        if labels is not None:
            file_name, labels = labels, utils.read_image(labels, "L")[:, :, 0]
            if self.sem_seg_classes is not None:
                what = f"training with MODEL.SEM_SEG_HEAD.NUM_CLASSES {self.sem_seg_classes[0]}"
                check_sem_seg_labels(labels, file_name, *self.sem_seg_classes, what)
        aug_input, transforms = self._augment(dataset_dict, image, labels)
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype("long"))
        shape, topk = aug_input.image.shape[:2], self.proposal_topk
        if topk is not None:
            utils.transform_proposals(dataset_dict, shape, transforms, proposal_topk=topk)
        if not self.is_train:  # evaluators read the annotations from the dataset
            dataset_dict.pop("annotations", None)
        elif "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, shape)
        return dataset_dict

    def _read_image(self, dataset_dict):
        """The record's image (HWC, ``self.image_format``), its size checked against the record."""
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        check_image_size(dataset_dict, image)
        return image

    def _augment(self, dataset_dict, image, sem_seg=None):
        """Augments ``image`` and (H, W) ``sem_seg`` into ``dataset_dict["image"]`` (C, H, W)."""
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        try:
            transforms = self.augmentations(aug_input)
        except ValueError as e:  # e.g. PIL's "height and width must be > 0" of a resize to 0
            raise ImageLoadError(
                f"Image {dataset_dict.get('file_name')!r} ({image.shape[1]}x{image.shape[0]}, "
                "width x height) cannot be augmented as the config says (INPUT.MIN_SIZE_* / "
                f"MAX_SIZE_*, crops): {type(e).__name__}: {e}."
            ) from None
        what, split = f"image {dataset_dict.get('file_name')!r}", (
            "TRAIN" if self.is_train else "TEST"
        )
        check_model_input_side(aug_input.image.shape, what, split)
        chw = np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
        dataset_dict["image"] = torch.as_tensor(chw)
        return aug_input, transforms
