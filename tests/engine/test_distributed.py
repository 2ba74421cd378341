# -*- coding: utf-8 -*-
"""
Distributed training and evaluation on the CPU (gloo), as ``train_net.py --num-gpus 2`` runs
them (Detectron2's ``launch`` of train_net's main): 2 processes train a tiny PANet for a few
iterations (their parameters stay identical, the checkpoints are written once), ``--resume``
continues with 2 processes, and a 2-process evaluation, during training and with --eval-only,
gathers every image (the metrics of a 1-process evaluation of the same checkpoint). Runs in CI,
without a GPU, in one launch of 2 processes (each start costs seconds of imports).
"""

import json
import math
import os
import shutil

import pytest
import torch

pytest.importorskip("detectron2")

import detectron2.utils.comm as comm  # noqa: E402
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine import HookBase, default_argument_parser, launch  # noqa: E402

from panet_d2.engine import PANetTrainer  # noqa: E402

from ..common import R18, ROOT, load_script  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "panet_R_18_synth_instance.yaml")
# 4 iterations of 2 images (1 per process), checkpoints after iterations 1 and 3, small images
OPTS = R18 + [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "SOLVER.IMS_PER_BATCH",
    2,
    "SOLVER.MAX_ITER",
    4,
    "SOLVER.STEPS",
    "(3,)",
    "SOLVER.WARMUP_ITERS",
    2,
    "SOLVER.CHECKPOINT_PERIOD",
    2,
    "INPUT.MIN_SIZE_TRAIN",
    "(96,)",
    "INPUT.MAX_SIZE_TRAIN",
    160,
    "INPUT.MIN_SIZE_TEST",
    96,
    "INPUT.MAX_SIZE_TEST",
    160,
    "DATALOADER.NUM_WORKERS",
    0,
    "SEED",
    7,
]


def _load_train_net():
    return load_script("train_net.py", "panet_train_net")


def _args(out_dir, *opts, eval_only=False, resume=False):
    argv = ["--config-file", CONFIG] + ["--eval-only"] * eval_only + ["--resume"] * resume
    return argv + ["OUTPUT_DIR", str(out_dir)] + [str(o) for o in OPTS + list(opts)]


class _SaveParameters(HookBase):
    """After training, each process saves its model's parameters and buffers."""

    def after_train(self):
        model = self.trainer.model
        state = {
            "ddp": isinstance(model, torch.nn.parallel.DistributedDataParallel),
            "parameters": {k: v.detach().clone() for k, v in model.named_parameters()},
            "buffers": {k: v.clone() for k, v in model.named_buffers()},
        }
        path = os.path.join(self.trainer.cfg.OUTPUT_DIR, "rank{}.pth".format(comm.get_rank()))
        torch.save(state, path)


def _job(root):
    """
    What each of the 2 processes runs: run a, training and its evaluation; an evaluation of its
    final checkpoint (--eval-only); run b, run a resumed from its first checkpoint (iteration 1).
    """
    torch.set_num_threads(1)
    train_net = _load_train_net()
    train_net.Trainer.build_hooks = lambda self: PANetTrainer.build_hooks(self) + [
        _SaveParameters()
    ]
    parse = default_argument_parser().parse_args
    a, b = os.path.join(root, "a"), os.path.join(root, "b")
    results = {"train": train_net._one_line_main(parse(_args(a)))}
    weights = os.path.join(a, "model_final.pth")
    args = _args(os.path.join(root, "eval2"), "MODEL.WEIGHTS", weights, eval_only=True)
    results["eval_only"] = train_net._one_line_main(parse(args))
    if comm.is_main_process():
        with open(os.path.join(a, "results.json"), "w") as f:
            json.dump(results, f)
        os.makedirs(b)
        shutil.copy(os.path.join(a, "model_0000001.pth"), b)
        with open(os.path.join(b, "last_checkpoint"), "w") as f:
            f.write("model_0000001.pth")
    comm.synchronize()
    train_net._one_line_main(parse(_args(b, "DATASETS.TEST", "()", resume=True)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs of :func:`_job` in 2 processes (train_net.py --num-gpus 2, on the CPU)."""
    root = tmp_path_factory.mktemp("distributed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PANET_D2_DATASETS", str(root / "datasets"))  # inherited by the processes
        mp.setenv("OMP_NUM_THREADS", "1")
        for split in ("panet_synth_train", "panet_synth_val"):
            DatasetCatalog.get(split)  # generated once, before the processes start
        launch(_job, 2, dist_url="auto", args=(str(root),))
    return root


def _assert_ranks_identical(out):
    """The 2 processes of a run ended with the same parameters: those of its final checkpoint."""
    r0 = torch.load(out / "rank0.pth", weights_only=True)
    r1 = torch.load(out / "rank1.pth", weights_only=True)
    assert r0["ddp"] and r1["ddp"]  # DistributedDataParallel on CPU modules
    assert r0["parameters"].keys() == r1["parameters"].keys()
    for k, v in r0["parameters"].items():
        assert torch.equal(v, r1["parameters"][k]), k
    final = torch.load(out / "model_final.pth", weights_only=True)["model"]
    for k, v in r0["parameters"].items():
        assert torch.equal(v, final[k[len("module.") :]]), k


def test_ranks_hold_identical_parameters(runs):
    _assert_ranks_identical(runs / "a")
    # and training did change them
    final = torch.load(runs / "a" / "model_final.pth", weights_only=True)["model"]
    first = torch.load(runs / "a" / "model_0000001.pth", weights_only=True)["model"]
    assert any(not torch.equal(v, first[k]) for k, v in final.items())


def _saves(path):
    """The checkpoints that a process saved into the folder of its log ``path`` (the logs of the
    runs before in the same process get them too)."""
    with open(path) as f:
        lines = [line.split("Saving checkpoint to ") for line in f]
    folder = os.path.dirname(str(path)) + os.sep
    return [p[1].strip() for p in lines if len(p) == 2 and p[1].startswith(folder)]


def test_checkpoints_written_once(runs):
    a = runs / "a"
    names = ("model_0000001.pth", "model_0000003.pth", "model_final.pth")
    assert _saves(a / "log.txt") == [str(a / n) for n in names]
    assert _saves(a / "log.txt.rank1") == []
    assert not [n for n in os.listdir(a) if n.endswith(".partial")]


def test_resume(runs):
    b = runs / "b"
    text = (b / "log.txt").read_text()
    assert "World size: 2" in text
    assert "Resuming at iteration 2: the training sampler skips the 2 samples already used." in text
    assert (b / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert _saves(b / "log.txt") == [str(b / n) for n in ("model_0000003.pth", "model_final.pth")]
    assert _saves(b / "log.txt.rank1") == []
    final = torch.load(b / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3
    _assert_ranks_identical(b)
    resumed_from = torch.load(b / "model_0000001.pth", weights_only=True)["model"]
    assert any(not torch.equal(v, resumed_from[k]) for k, v in final["model"].items())


def _assert_same_results(a, b):
    assert set(a) == set(b) == {"bbox", "segm"}
    for task in a:
        assert set(a[task]) == set(b[task])
        for k, x in a[task].items():
            y = b[task][k]
            assert (math.isnan(x) and math.isnan(y)) or x == y, (task, k, x, y)


def test_two_process_evaluation_gathers_every_image(runs, tmp_path):
    with open(runs / "a" / "results.json") as f:
        two = json.load(f)  # the evaluation at the end of training, and of the --eval-only run
    # the predictions that rank 0 gathered: one per image of panet_synth_val (16)
    for folder in (runs / "a", runs / "eval2"):
        path = folder / "inference" / "instances_predictions.pth"
        predictions = torch.load(path, weights_only=False)
        assert sorted(p["image_id"] for p in predictions) == list(range(1, 17)), folder
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PANET_D2_DATASETS", str(runs / "datasets"))
        assert [d["image_id"] for d in DatasetCatalog.get("panet_synth_val")] == list(range(1, 17))
        weights = runs / "a" / "model_final.pth"
        one = _load_train_net().main(
            default_argument_parser().parse_args(
                _args(tmp_path, "MODEL.WEIGHTS", weights, eval_only=True)
            )
        )
    _assert_same_results(two["eval_only"], one)
    # during training too: every process evaluates the model of the checkpoint (BatchNorm
    # statistics of rank 0)
    _assert_same_results(two["train"], one)
