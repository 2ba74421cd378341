# -*- coding: utf-8 -*-
"""
docs/tutorial.ipynb runs: its code cells, in order, as one script in a fresh ``python3`` (no
Jupyter needed), in an empty folder, with the generated dataset in a temporary cache; then what
its last cell summarises is checked (the photo's predictions, the training iterations, the
COCOEvaluator metrics, the panoptic picture). Also its form: an nbformat 4 notebook without
stored outputs or shell/magic lines (plain Python), linked from README.md and docs/install.md.
"""

import json
import os
import subprocess
import sys
import time

import cv2

from ..common import ROOT

NOTEBOOK = os.path.join(ROOT, "docs", "tutorial.ipynb")
TIMEOUT_S = 240  # it takes 20-40 s on 2 idle CPU cores; the limit leaves room for a busy machine
# what the test appends to the notebook's cells: its summary, as JSON, in a file
SUMMARY = """
with open("summary_for_the_test.json", "w") as _f:
    json.dump(summary, _f)
"""


def _notebook():
    with open(NOTEBOOK, encoding="utf-8") as f:
        return json.load(f)


def _code_cells(notebook):
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def test_notebook_is_plain_nbformat_4():
    notebook = _notebook()
    assert notebook["nbformat"] == 4 and notebook["metadata"]["kernelspec"]["language"] == "python"
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None  # no stored output
    for source in _code_cells(notebook):
        compile(source, NOTEBOOK, "exec")  # plain Python: no "!pip", no "%magic"
        assert not [line for line in source.splitlines() if line.lstrip().startswith(("!", "%"))]
    text = json.dumps(notebook)
    # what a notebook user must be told: the device of the configs, where the weights come from
    assert 'MODEL.DEVICE = \\"cpu\\"' in text and "model_zoo.get_config" in text
    assert "randomly initialised" in text
    for doc in ("README.md", os.path.join("docs", "install.md")):
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            assert "tutorial.ipynb" in f.read(), doc


def test_notebook_runs_on_the_cpu(tmp_path):
    script = tmp_path / "tutorial.py"
    script.write_text("\n\n".join(_code_cells(_notebook()) + [SUMMARY]), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        PANET_D2_DATASETS=str(tmp_path / "datasets"),  # the generated dataset, if it is used
        MPLBACKEND="Agg",  # plt.show() draws nothing
        CUDA_VISIBLE_DEVICES="",
    )
    start = time.time()
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=str(work),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    took = time.time() - start
    assert out.returncode == 0, out.stderr[-4000:]
    with open(work / "summary_for_the_test.json") as f:
        summary = json.load(f)

    # 1. the release model's config on the photo (random weights here: no instance above 0.5)
    assert "No converted release weights" in out.stdout or summary["release_weights"]
    assert summary["photo_instances"] >= 0
    # 2. the dataset it wrote: COCO JSON files that Detectron2's loader reads, 6 + 4 images
    for split, n in (("train", 6), ("val", 4)):
        with open(work / "my_dataset" / "{}.json".format(split)) as f:
            coco = json.load(f)
        assert len(coco["images"]) == n and coco["annotations"], split
        image_ids = {i["id"] for i in coco["images"]}
        assert {a["image_id"] for a in coco["annotations"]} <= image_ids
        for image in coco["images"]:
            assert os.path.isfile(work / "my_dataset" / "images" / image["file_name"])
    # fine-tuned for 10 iterations, then evaluated by COCOEvaluator: box and mask AP
    assert summary["train_iterations"] == 10
    assert "iter: 9" in out.stderr + out.stdout  # Detectron2's training log
    assert set(summary["metrics"]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert {"AP", "AP50", "AP75"} <= set(summary["metrics"][task]), task
    assert os.path.isfile(work / "output_tutorial" / "eval" / "coco_instances_results.json")
    # 3. the panoptic model drawn: a picture of the image's size, with its segments
    with open(work / "my_dataset" / "train.json") as f:
        drawn = json.load(f)["images"][1]["file_name"]  # the second training image
    image = cv2.imread(str(work / "my_dataset" / "images" / drawn))
    assert summary["panoptic_picture"] == list(image.shape)
    assert summary["panoptic_segments"] >= 1  # stuff is always found (the semantic branch)
    print("tutorial notebook: {:.1f} s".format(took))
    # well under a minute on an idle machine; the bound leaves room for a busy one
    assert took < 120, "the notebook took {:.0f} s: keep it under a minute".format(took)
