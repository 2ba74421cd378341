# -*- coding: utf-8 -*-
"""
:class:`PANetTrainer`: Detectron2's :class:`DefaultTrainer` for panet_d2.
"""

import contextlib
import logging
import math
import os
import re
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

import detectron2.utils.comm as comm
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNNWithTTA

from ..checkpoint import PANetCheckpointer
from ..compat import atomic_output_files, cityscapes_api_alias, ddp_on_cpu
from ..data import PanopticDatasetMapper
from ..data.image_io import ImageDatasetMapper
from ..errors import DatasetError, TrainingDivergedError
from ..evaluation import build_evaluator
from ..modeling import PanopticPANet
from .checks import (
    OneLineInputErrors,
    check_files,
    check_inputs,
    check_tta,
    drop_invalid_annotations,
    drop_invalid_coco_annotations,
    loading_dataset,
)
from .cli import disk_full_error, disk_full_message
from .resume import (
    ResumableSampler,
    ResumeStateHook,
    check_last_checkpoint,
    preserved_rng_states,
)

__all__ = ["PANetTrainer", "MomentumRescale", "TrainingInterrupted", "uses_panoptic_mapper"]

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """
    Training stopped by Ctrl-C (a ``KeyboardInterrupt``, so anyone catching that still catches
    it): ``iteration``, the one it stopped in, and ``last_checkpoint``, the file that
    ``last_checkpoint`` names (what ``--resume`` continues from) or None.
    """

    def __init__(self, iteration, last_checkpoint):
        super().__init__(iteration, last_checkpoint)
        self.iteration, self.last_checkpoint = iteration, last_checkpoint

    def __str__(self):
        return "Training stopped by Ctrl-C at iteration {}; the last checkpoint: {}.".format(
            self.iteration, repr(self.last_checkpoint) if self.last_checkpoint else "none"
        )


class _OneLineErrors(OneLineInputErrors):
    """For Detectron2's "detectron2.engine.train_loop" logger: :class:`OneLineInputErrors`, and a
    full disk that stops training (an OSError, or an error raised from one:
    :func:`~panet_d2.engine.cli.disk_full_error`) logged as one line as well, without the
    traceback."""

    def filter(self, record):
        full = disk_full_error(record.exc_info[1]) if record.exc_info else None
        if full is not None:
            record.msg = "{} {}".format(record.getMessage(), disk_full_message(full))
            record.args, record.exc_info, record.exc_text = (), None, None
        return super().filter(record)


_ONE_LINE_ERRORS = _OneLineErrors()

# The optimizer hyper-parameters that --resume compares (a param group's key, its config key).
_SOLVER_KEYS = {"initial_lr": "SOLVER.BASE_LR", "momentum": "SOLVER.MOMENTUM"}
_SOLVER_KEYS.update(weight_decay="SOLVER.WEIGHT_DECAY", nesterov="SOLVER.NESTEROV")


class MomentumRescale(hooks.HookBase):
    """
    SOLVER.SCALE_MOMENTUM (Detectron's, the authors' release): when a parameter group's learning
    rate changes by more than a factor of ``THRESHOLD`` between two iterations (the steps, not
    the warm-up), SGD's momentum buffers of that group are multiplied by new lr / old lr before
    the step that uses the new rate. Checkpointable: a resumed run knows the last rates.
    """

    THRESHOLD = 1.1  # Detectron's SOLVER.SCALE_MOMENTUM_THRESHOLD

    def __init__(self, optimizer):
        self._optimizer = optimizer
        self._last = None  # the learning rate of each group at the previous step

    def before_step(self):
        groups = self._optimizer.param_groups
        for g, old in zip(groups, self._last or ()):
            new = g["lr"]
            if old > 1e-7 and max(new / old, old / max(new, 1e-10)) > self.THRESHOLD:
                for p in g["params"]:
                    buf = self._optimizer.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(new / old)
        self._last = [g["lr"] for g in groups]

    def state_dict(self):
        return {"last_lrs": self._last}

    def load_state_dict(self, state_dict):
        self._last = state_dict.get("last_lrs")


def _broadcast_buffers(model):
    """
    Detectron2's DDP model has ``broadcast_buffers=False``: each process keeps the running
    statistics of its own BatchNorm layers, and checkpoints hold rank 0's. Every process takes
    rank 0's buffers, so that an evaluation during training evaluates the model of the checkpoint
    on every process (training normalises by batch statistics: unchanged).
    """
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def uses_panoptic_mapper(cfg, dataset_dicts):
    """
    Whether to train with panet_d2's ``PanopticDatasetMapper`` (it makes the semantic targets
    from the panoptic PNGs): for a PanopticPANet on records with "pan_seg_file_name". Detectron2's
    ``DatasetMapper`` otherwise.
    """
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    panoptic_records = bool(dataset_dicts) and "pan_seg_file_name" in dataset_dicts[0]
    return panoptic_records and issubclass(arch, PanopticPANet)


class PANetTrainer(DefaultTrainer):
    """
    Detectron2's :class:`DefaultTrainer` with:

    * :func:`panet_d2.engine.checks.check_inputs` before anything is built;
    * :class:`PANetCheckpointer` (nothing run from a file, atomic saves, clear checkpoint
      errors): MODEL.WEIGHTS is a warm start (new layers listed in the log, other class counts
      allowed), ``--resume`` needs every tensor of the model in the last checkpoint;
    * ``--resume`` with a config whose solver values (SOLVER.BASE_LR, MOMENTUM, WEIGHT_DECAY,
      NESTEROV) differ from the checkpoint's: one line each, and the config's are used
      (:meth:`resume_or_load`);
    * a diverging run ends with one :class:`TrainingDivergedError` line (a FloatingPointError,
      as Detectron2's): iteration, loss, last checkpoint; NaN / inf weights are never saved;
    * evaluators by the test datasets' ``evaluator_type`` (:mod:`panet_d2.evaluation`); with
      TEST.AUG.ENABLED, one more evaluation with test-time augmentation after training, its
      results under "<task>_TTA";
    * distributed training on CPUs as on GPUs (:func:`_ddp_on_cpu`);
    * images read by :func:`panet_d2.data.image_io.read_image` (16-bit scaled, 32-bit refused);
      the training mapper of :func:`uses_panoptic_mapper`, else :class:`ImageDatasetMapper`;
    * invalid annotations dropped, with a count, as the evaluation drops them
      (:func:`panet_d2.engine.checks.drop_invalid_annotations`);
    * exact ``--resume`` (:mod:`panet_d2.engine.resume`): the trainer keeps the sampler of its
      training loader (``train_sampler``) for its :class:`ResumeStateHook`; a ``last_checkpoint``
      that names a missing file is refused naming both (:func:`check_last_checkpoint`);
    * Ctrl-C ends training with :class:`TrainingInterrupted` (the last checkpoint); a full disk
      that stops it is logged in one line; after training stopped early, the hooks' errors (the
      writers' on that full disk) do not replace the error that stopped it (:meth:`after_train`);
    * the evaluators' files written atomically (:func:`~panet_d2.compat.atomic_output_files`);
      an empty test dataset is one :class:`DatasetError`.
    """

    def __init__(self, cfg):
        check_inputs(cfg, train=True)
        with ddp_on_cpu():
            super().__init__(cfg)

    def build_train_loader(self, cfg):
        """
        Detectron2's ``build_detection_train_loader`` with :func:`uses_panoptic_mapper` (else
        :class:`ImageDatasetMapper`), the invalid annotations dropped, a
        :class:`ResumableSampler`, and a generator of its own for the worker seeds (drawn at the
        first step, they would shift the global torch generator of a resumed run).

        Unlike DefaultTrainer's classmethod, a method: the sampler of the first loader it builds
        (the training loader; PreciseBN builds another) is kept as ``self.train_sampler``.
        """
        with loading_dataset(cfg.DATASETS.TRAIN, "DATASETS.TRAIN"):
            kwargs = build_detection_train_loader.from_config(cfg)
        dicts = kwargs["dataset"]
        check_files(dicts, ", ".join(cfg.DATASETS.TRAIN), "DATASETS.TRAIN")
        if uses_panoptic_mapper(cfg, dicts):  # its targets come from the PNGs, not annotations
            kwargs["mapper"] = PanopticDatasetMapper(cfg, True)
        else:
            names = cfg.DATASETS.TRAIN
            clean = drop_invalid_annotations(dicts, names, "DATASETS.TRAIN", cfg.MODEL.MASK_ON)
            if any(a is not b for a, b in zip(clean, dicts)):  # a new sampler for the new list
                if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
                    clean = filter_images_with_only_crowd_annotations(clean)
                kwargs = build_detection_train_loader.from_config(cfg, dataset=clean)
            kwargs["mapper"] = ImageDatasetMapper(cfg, True)
        if kwargs["sampler"] is not None:
            kwargs["sampler"] = ResumableSampler(kwargs["sampler"])
        if not hasattr(self, "train_sampler"):
            self.train_sampler = kwargs["sampler"]
        seed = cfg.SEED if cfg.SEED >= 0 else int(torch.randint(2**31 - 1, ()).item())
        return build_detection_train_loader(**kwargs, seed=seed + comm.get_rank())

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling build_hooks:
        # replace it first, so that PeriodicCheckpointer and resume_or_load use ours.
        old = self.checkpointer
        self.checkpointer = PANetCheckpointer(
            old.model,
            old.save_dir,
            save_to_disk=old.save_to_disk,
            warm_start=True,
            **old.checkpointables,
        )
        per_iter = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        ret = [ResumeStateHook(self.train_sampler, per_iter)] + super().build_hooks()
        if self.cfg.SOLVER.SCALE_MOMENTUM:
            ret.insert(1, MomentumRescale(self.optimizer))
        if self.cfg.TEST.AUG.ENABLED:
            # before PeriodicWriter, which closes the writers after training: the "*_TTA" metrics
            # then reach metrics.json
            at = len(ret) - 1 if isinstance(ret[-1], hooks.PeriodicWriter) else len(ret)
            ret.insert(at, hooks.EvalHook(0, self._test_with_TTA_and_save_results))
        return ret

    def _test_with_TTA_and_save_results(self):
        results = self.test_with_TTA(self.cfg, self.model)
        self._last_eval_results = OrderedDict(getattr(self, "_last_eval_results", {}) or {})
        self._last_eval_results.update(results)
        return results

    def resume_or_load(self, resume=True):
        """
        DefaultTrainer's. When resuming from a checkpoint, each solver value of the config that
        differs from the checkpoint's (SOLVER.BASE_LR, MOMENTUM, WEIGHT_DECAY(_NORM/_BIAS),
        NESTEROV; Detectron2 would silently take the checkpoint's) is logged in one line, and the
        run uses the config's: the LR schedule goes on from the checkpoint's iteration with the
        config's base LR, as its shape (STEPS, MAX_ITER, WARMUP_*, GAMMA) is the config's anyway.
        """
        config = [{k: g[k] for k in _SOLVER_KEYS if k in g} for g in self.optimizer.param_groups]
        base_lrs = list(getattr(self.scheduler, "base_lrs", []))
        if resume:
            check_last_checkpoint(self.checkpointer)
        super().resume_or_load(resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        groups = self.optimizer.param_groups  # the optimizer's load_state_dict made new ones
        path = self.checkpointer.get_checkpoint_file()
        lines = OrderedDict()
        for i, (group, ours) in enumerate(zip(groups, config)):
            for k, value in ours.items():
                theirs = group.get(k, value)
                if theirs == value:
                    continue
                key = self._solver_key(k, value, i)
                lines[(key, value, theirs)] = None
                group[k] = value
                if k == "initial_lr":  # the checkpoint's LR of this iteration, rescaled
                    group["lr"] = group["lr"] * value / theirs if theirs else value
        if base_lrs and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = base_lrs
        for key, value, theirs in lines:
            logger.warning(
                "--resume: {} is {} in the config, {} in the checkpoint {!r}: the run uses the "
                "config's {} (from iteration {}).".format(
                    key, value, theirs, os.path.basename(path), value, self.start_iter
                )
            )
        if self.start_iter >= self.max_iter:
            logger.warning(
                "--resume: the checkpoint {!r} is at iteration {}, SOLVER.MAX_ITER={}: nothing "
                "left to train.".format(os.path.basename(path), self.start_iter, self.max_iter)
            )

    def _solver_key(self, k, value, index):
        solver = self.cfg.SOLVER
        if k == "initial_lr" and not math.isclose(value, solver.BASE_LR):
            return "the LR of parameter group {} (SOLVER.BASE_LR x SOLVER.BIAS_LR_FACTOR)".format(
                index
            )
        if k == "weight_decay":
            for name in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_BIAS"):
                if solver.get(name) is not None and math.isclose(value, solver.get(name)):
                    return "SOLVER." + name
        return _SOLVER_KEYS[k]

    def train(self):
        """
        Runs training.

        Returns:
            OrderedDict or None: the results of the last evaluation, with the "*_TTA" results
            when TEST.AUG.ENABLED.

        Raises:
            TrainingDivergedError: a FloatingPointError (Detectron2's, when a loss is NaN or
                inf, or the checkpointer's, when the weights are) as one line: the iteration,
                the loss, the last checkpoint written before it.

            TrainingInterrupted: Ctrl-C (a KeyboardInterrupt), with the iteration and the last
                checkpoint.

        While it runs, Detectron2's "Exception during training:" log of such an error, an
        :class:`InputError` or a full disk is one line (:class:`_OneLineErrors`, removed at the
        end).
        """
        train_loop = logging.getLogger("detectron2.engine.train_loop")
        added = _ONE_LINE_ERRORS not in train_loop.filters
        train_loop.addFilter(_ONE_LINE_ERRORS)
        try:
            super().train()
        except FloatingPointError as e:
            raise self._diverged(e) from e
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.iter, self._last_checkpoint()) from None
        finally:
            if added:
                train_loop.removeFilter(_ONE_LINE_ERRORS)
        return getattr(self, "_last_eval_results", None)

    def _last_checkpoint(self):
        if self.checkpointer.has_checkpoint():
            return self.checkpointer.get_checkpoint_file()
        return None

    def build_writers(self):
        """DefaultTrainer's writers, kept (``event_writers``) for :meth:`after_train`."""
        self.event_writers = super().build_writers()
        return self.event_writers

    def after_train(self):
        """
        Each hook's ``after_train``, as Detectron2's, with every hook run even when one fails (the
        first error is raised after the others ran). When training stopped early (an error or
        Ctrl-C: Detectron2 counts ``iter`` up to ``max_iter`` only when it finished), no
        evaluation runs, the hooks' errors (the writers' on the full disk that stopped a
        checkpoint save) are logged in one line each, not raised, and the event writers are
        closed: the run ends with the error that stopped training.
        """
        stopped = self.iter < self.max_iter
        self.storage.iter = self.iter
        first = None
        for h in self._hooks:
            # UPSTREAM-WORKAROUND hooks-after-failed-training: Detectron2 0.6's EvalHook evaluates
            # after a failure at the last iteration (its check of a failed training is iter + 1 >=
            # max_iter), and TrainerBase.after_train stops at the first hook that fails: a
            # writer's error (a full disk) replaced the error that had stopped training.
            if stopped and isinstance(h, hooks.EvalHook):
                continue
            try:
                h.after_train()
            except Exception as e:
                if first is None and not stopped:
                    first = e
                    continue
                logger.warning(
                    "After training %s, %s could not finish: %s: %s",
                    "stopped" if stopped else "failed",
                    type(h).__name__,
                    type(e).__name__,
                    " ".join(str(e).split()),
                )
        if stopped or first is not None:
            for writer in getattr(self, "event_writers", ()):
                with contextlib.suppress(Exception):  # closed even when its last flush fails
                    writer.close()
        if first is not None:
            raise first

    def _diverged(self, e):
        last = self._last_checkpoint()
        found = re.search(r"loss_dict = (\{.*\})", str(e), re.S)
        if found:
            losses = " ".join(found.group(1).split())
            losses = re.sub(r"np\.float\d+\(([^()]*)\)", r"\1", losses)  # NumPy 2's repr
            what = "the loss became NaN or infinite: {}".format(losses)
        else:  # the checkpointer's (weights), or Detectron2's of NaN boxes in the forward pass
            what = " ".join(str(e).split()).rstrip(".")
            try:
                loss, at = self.storage.latest()["total_loss"]
                what += " (the last total_loss: {:.4g}, at iteration {})".format(loss, at)
            except (AttributeError, KeyError):
                pass
        return TrainingDivergedError(
            "Training diverged at iteration {}: {}. The last checkpoint written before it: {}. "
            "Try a lower SOLVER.BASE_LR, a longer SOLVER.WARMUP_ITERS or "
            "SOLVER.CLIP_GRADIENTS.ENABLED True.".format(
                self.iter, what, repr(last) + " (named by last_checkpoint)" if last else "none"
            ),
            last_checkpoint=last,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader with :class:`ImageDatasetMapper` (panet_d2's image reader);
        Detectron2's Cityscapes loaders import (:func:`~panet_d2.compat.cityscapes_api_alias`);
        an empty dataset is one :class:`DatasetError` (Detectron2: an AssertionError)."""
        with cityscapes_api_alias():
            mapper = ImageDatasetMapper(cfg, False)
            try:
                return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
            except AssertionError:
                if DatasetCatalog.get(dataset_name):
                    raise
        json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        raise DatasetError(
            "Dataset {!r} in DATASETS.TEST has no images{}: nothing to evaluate. Give it images, "
            "or remove it from DATASETS.TEST.".format(
                dataset_name, " (json_file={!r})".format(json_file) if json_file else ""
            )
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """
        :func:`panet_d2.evaluation.build_evaluator`; the ground truth of its COCOEvaluators
        without the annotations that training drops (pycocotools would fail on them after the
        whole inference): :func:`panet_d2.engine.checks.drop_invalid_coco_annotations`.
        """
        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        for e in getattr(evaluator, "_evaluators", [evaluator]):
            if isinstance(e, COCOEvaluator) and hasattr(e, "_coco_api"):
                drop_invalid_coco_annotations(e._coco_api, dataset_name, cfg.MODEL.MASK_ON)
        return evaluator

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer's, with the evaluators' files written atomically
        (:func:`~panet_d2.compat.atomic_output_files`: a full disk leaves no truncated file)."""
        if isinstance(model, DistributedDataParallel):  # during training, several processes
            _broadcast_buffers(model)
        # evaluation draws from the global random generators: keep training's stream as it was
        with preserved_rng_states(), atomic_output_files():
            return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """
        :meth:`test` of ``model`` wrapped in Detectron2's ``GeneralizedRCNNWithTTA`` (TEST.AUG.*),
        the evaluators' files under ``<OUTPUT_DIR>/inference_TTA``.

        Returns:
            OrderedDict: the results, under "<task>_TTA".
        """
        check_tta(cfg)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, GeneralizedRCNNWithTTA(cfg, model), evaluators)
        return OrderedDict((task + "_TTA", metrics) for task, metrics in results.items())
