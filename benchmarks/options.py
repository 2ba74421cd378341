"""The benchmarks' shared command-line options, checked when parsed (one line, no traceback)."""

import argparse
import math

import torch

from panet_d2.data.image_io import MAX_SIDE
from panet_d2.engine.checks import machine_memory


def at_least(low, high=None):
    """An argparse ``type``: an integer >= ``low`` (and <= ``high``), else argparse's one line."""

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value}: must be at most {high}")
        return value

    return integer


def positive_number(text):
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number > 0")
    return value


def check_memory(parser, nbytes, what, share=4):
    """argparse's one-line error if ``nbytes`` (``what`` takes them) exceed 1 / ``share`` of this
    machine's memory (the run needs a few times its inputs)."""
    memory = machine_memory()
    if nbytes > memory / share:
        parser.error(
            f"{what} take {nbytes / 2**30:.1f} GiB, more than 1/{share} of this machine's memory "
            f"({memory / 2**30:.1f} GiB): give fewer or smaller ones"
        )


def device_option(text):
    """An argparse ``type``: "cpu", or "cuda" / "cuda:N" of a GPU this machine has."""
    try:
        value = torch.device(text)
    except RuntimeError:
        value = None
    if value is None or value.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: give cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if value.type == "cuda" else 0
    if value.type == "cuda" and count == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    if value.type == "cuda" and (value.index or 0) >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return text


def add_timing_options(parser, height=800, width=1216, repeats=5, threads=2):
    """--height, --width (the image, pixels, at most panet_d2's MAX_SIDE), --repeats (timed runs),
    --threads (intra-op)."""
    parser.add_argument("--height", type=at_least(1, MAX_SIDE), default=height)
    parser.add_argument("--width", type=at_least(1, MAX_SIDE), default=width)
    parser.add_argument("--repeats", type=at_least(1), default=repeats)
    parser.add_argument("--threads", type=at_least(1), default=threads)
    return parser
