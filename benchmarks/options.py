"""The benchmarks' shared command-line options, checked when parsed (one line, no traceback)."""

import argparse

import torch


def at_least(low):
    """An argparse ``type``: an integer >= ``low``, else argparse's one-line error."""

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low}")
        return value

    return integer


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
    """--height, --width (the image, pixels), --repeats (timed runs), --threads (intra-op)."""
    parser.add_argument("--height", type=at_least(1), default=height)
    parser.add_argument("--width", type=at_least(1), default=width)
    parser.add_argument("--repeats", type=at_least(1), default=repeats)
    parser.add_argument("--threads", type=at_least(1), default=threads)
    return parser
