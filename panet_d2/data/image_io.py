# -*- coding: utf-8 -*-
"""
The one image reader of panet_d2 (:func:`read_image`) and :class:`ImageDatasetMapper`,
Detectron2's ``DatasetMapper`` reading with it (what differs from Detectron2's: docs/design.md).
"""

import copy

import numpy as np
import torch
from PIL import Image, ImageOps

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager

from ..errors import DatasetError, ImageLoadError, InputError

__all__ = ["read_image", "check_image_size", "ImageDatasetMapper", "MAX_ASPECT_RATIO"]

_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
# The longest side of an image that panet_d2 reads, in its shortest sides: resized to a model's
# input sizes (shortest side MIN_SIZE, longest at most MAX_SIZE) a longer image is a few pixels
# across, or none (Detectron2's resize then fails with a PIL ValueError).
MAX_ASPECT_RATIO = 100


def _is_16_bit(image):
    # PIL opens a 16-bit PNG as "I;16" (Pillow >= 10) or "I" (older; a PNG has no 32-bit pixels)
    return image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG")


# UPSTREAM-WORKAROUND pil-16-bit-read: Detectron2 0.6 read_image (PIL convert) clips 16-bit pixels:
# a 16-bit grayscale PNG becomes white.
def read_image(file_name, format=None, what="image"):
    """
    Args:
        file_name (str): a path of Detectron2's PathManager.
        format (str): as Detectron2's ``read_image``: a PIL mode ("RGB", "L", ...), "BGR" or
            "YUV-BT.601"; None: the image's own mode.
        what (str): what the file is, for the error message.

    Returns:
        np.ndarray: HWC, as Detectron2's ``read_image`` returns it, with the EXIF orientation
        applied; a 16-bit image is first scaled to 8 bit (value / 257, rounded).

    Raises:
        ImageLoadError: naming the file, when it cannot be read or has 32-bit pixels (PIL modes
            "I" and "F").
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            _check_shape(image.size, file_name, what)
            if _is_16_bit(image):
                gray = np.asarray(ImageOps.exif_transpose(image), dtype=np.float64) / 257
                image = Image.fromarray(np.round(gray).astype(np.uint8), mode="L")
            elif image.mode in ("I", "F"):
                raise ImageLoadError(
                    "{} {!r} has PIL mode {!r} (32-bit pixels); panet_d2 reads 8- and 16-bit "
                    "images: convert it (e.g. to an 8-bit PNG).".format(
                        what[:1].upper() + what[1:], file_name, image.mode
                    )
                )
            else:
                image = ImageOps.exif_transpose(image)
            return utils.convert_PIL_to_numpy(image, format)
    except InputError:
        raise
    # PIL's errors for missing / unreadable files, and for images over its pixel limit
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageLoadError("Cannot read {} {!r}: {}".format(what, file_name, e)) from e


def _check_shape(size, file_name, what):
    """Raises :class:`ImageLoadError` for an image (``size``: width, height) with no pixels or
    whose longest side is more than :data:`MAX_ASPECT_RATIO` times its shortest."""
    w, h = size
    if min(w, h) < 1 or max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageLoadError(
            "{} {!r} is {}x{} (width x height): panet_d2 reads images whose longest side is at "
            "most {} times the shortest (resized to the model's input sizes, this one would be "
            "a few pixels across or none): crop it or cut it into parts.".format(
                what[:1].upper() + what[1:], file_name, w, h, MAX_ASPECT_RATIO
            )
        )


def _size_mismatch(dataset_dict):
    """The DatasetError of a record whose width / height differ from its image file's."""
    file_name = dataset_dict["file_name"]
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            stored, orientation = image.size, image.getexif().get(_EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError) as e:
        return ImageLoadError("Cannot read image {!r}: {}".format(file_name, e))
    read = stored[::-1] if orientation in _ROTATED else stored
    record = (dataset_dict.get("width"), dataset_dict.get("height"))
    where = "Image {!r}{}".format(
        file_name,
        " (image_id {!r})".format(dataset_dict["image_id"]) if "image_id" in dataset_dict else "",
    )
    msg = "{} is {}x{} (width x height) as read, its dataset record says {}x{}".format(
        where, read[0], read[1], *record
    )
    if orientation in _ROTATED:
        msg += (
            "; the file is stored {}x{} with EXIF orientation {} (a rotated photo, read upright "
            "as Detectron2 reads it)".format(stored[0], stored[1], orientation)
        )
        if tuple(record) == tuple(stored):
            msg += ": write its upright size {}x{} in the dataset's JSON".format(*read)
    elif orientation not in (None, 1):
        msg += " (EXIF orientation {})".format(orientation)
    return DatasetError(msg + ". Fix the width / height of the record, or the image file.")


def check_image_size(dataset_dict, image):
    """
    Detectron2's ``check_image_size`` (the record's width / height against ``image``, HWC as
    read), whose SizeMismatchError becomes a :class:`DatasetError` naming the image, both sizes
    and, for a rotated photo, its EXIF orientation.
    """
    try:
        utils.check_image_size(dataset_dict, image)
    except utils.SizeMismatchError:
        raise _size_mismatch(dataset_dict) from None


class ImageDatasetMapper(DatasetMapper):
    """
    Detectron2's ``DatasetMapper`` (same arguments and outputs) whose image is read by
    :func:`read_image`: 16-bit images scaled to 8 bit, 32-bit ones refused with one line; a
    record whose size differs from its image's is one line (:func:`check_image_size`).
    ``DatasetMapper.__call__`` has no hook for the reader ("USER: Write your own image loading"),
    so this ``__call__`` is the mapping written with the same public steps (Detectron2's
    ``read_image`` for the labels of a semantic PNG, ``AugInput``, ``transform_proposals``,
    ``_transform_annotations``).
    """

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read_image(dataset_dict)
        labels = dataset_dict.pop("sem_seg_file_name", None)
        labels = None if labels is None else utils.read_image(labels, "L")[:, :, 0]
        aug_input, transforms = self._augment(dataset_dict, image, labels)
        if aug_input.sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype("long"))
        shape = aug_input.image.shape[:2]
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, shape, transforms, proposal_topk=self.proposal_topk
            )
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
        """
        Runs the augmentations on ``image`` (and the (H, W) labels ``sem_seg``, nearest) and puts
        the (C, H, W) image tensor into ``dataset_dict["image"]``.

        Returns:
            (AugInput, TransformList): the augmented input, and the transforms applied.
        """
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        try:
            transforms = self.augmentations(aug_input)
        except ValueError as e:  # e.g. PIL's "height and width must be > 0" of a resize to 0
            raise ImageLoadError(
                "Image {!r} ({}x{}, width x height) cannot be augmented as the config says "
                "(INPUT.MIN_SIZE_* / MAX_SIZE_*, crops): {}: {}.".format(
                    dataset_dict.get("file_name"),
                    image.shape[1],
                    image.shape[0],
                    type(e).__name__,
                    e,
                )
            ) from None
        chw = np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))
        dataset_dict["image"] = torch.as_tensor(chw)
        return aug_input, transforms
