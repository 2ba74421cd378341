""":class:`PANetTrainer`: Detectron2's :class:`DefaultTrainer` for panet_d2 (docs/design.md)."""

import contextlib
import logging
import math
import os
import re
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import build as d2_build
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNNWithTTA

from ..checkpoint import PANetCheckpointer
from ..compat import atomic_output_files, cityscapes_api_alias, ddp_on_cpu
from ..data import PanopticDatasetMapper
from ..data.image_io import ImageDatasetMapper
from ..errors import CheckpointError, DatasetError, InputError, TrainingDivergedError
from ..evaluation import build_evaluator
from ..modeling import PanopticPANet
from . import checks
from .cli import clean_error_message, disk_full_message
from .resume import ResumableSampler, ResumeStateHook, check_last_checkpoint, preserved_rng_states

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C at ``iteration``; ``last_checkpoint``: the file or None."""

    def __init__(self, iteration, last_checkpoint):
        last = repr(last_checkpoint) if last_checkpoint else "none"
        msg = f"Training stopped by Ctrl-C at iteration {iteration}; the last checkpoint: {last}."
        super().__init__(msg)
        self.iteration, self.last_checkpoint = iteration, last_checkpoint


class _OneLineErrors(logging.Filter):
    """Logs an input error, a divergence or a full disk that stops training in one line."""

    def filter(self, record):
        e = record.exc_info[1] if record.exc_info else None
        line = disk_full_message(e)
        if line is None and isinstance(e, (InputError, FloatingPointError)):
            line = f"{type(e).__name__}: {' '.join(clean_error_message(e).split())}"
        if line is not None:
            record.msg = f"{record.getMessage()} {line}"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


_ONE_LINE_ERRORS = _OneLineErrors()

# The optimizer hyper-parameters that --resume compares (a param group's key, its config key).
_SOLVER_KEYS = {"initial_lr": "SOLVER.BASE_LR", "momentum": "SOLVER.MOMENTUM"}
_SOLVER_KEYS.update(weight_decay="SOLVER.WEIGHT_DECAY", nesterov="SOLVER.NESTEROV")


class MomentumRescale(hooks.HookBase):
    """SOLVER.SCALE_MOMENTUM (Detectron's): a parameter group's SGD momentum buffers scaled by
    new lr / old lr when its learning rate changes by more than ``THRESHOLD`` times."""

    THRESHOLD = 1.1  # Detectron's SOLVER.SCALE_MOMENTUM_THRESHOLD

    def __init__(self, optimizer):
        self._optimizer, self._last = optimizer, None  # _last: each group's LR at the previous step

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


def uses_panoptic_mapper(cfg, dataset_dicts):
    """Whether a PanopticPANet trains on panoptic records (:class:`PanopticDatasetMapper`)."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    panoptic_records = bool(dataset_dicts) and "pan_seg_file_name" in dataset_dicts[0]
    return panoptic_records and issubclass(arch, PanopticPANet)


class PANetTrainer(DefaultTrainer):
    """Detectron2's :class:`DefaultTrainer` for panet_d2: input checks, exact ``--resume``, one-line
    errors, panet_d2's mappers and evaluators (docs/design.md)."""

    def __init__(self, cfg):
        checks.check_inputs(cfg, train=True)
        with ddp_on_cpu():
            super().__init__(cfg)

    def build_train_loader(self, cfg):
        """Detectron2's train loader, valid annotations only, with a :class:`ResumableSampler`."""
        with checks.loading_dataset(cfg.DATASETS.TRAIN, "DATASETS.TRAIN"):
            kwargs = d2_build.build_detection_train_loader.from_config(cfg)
        dicts = kwargs["dataset"]
        checks.check_files(dicts, ", ".join(cfg.DATASETS.TRAIN), "DATASETS.TRAIN")
        checks.check_class_order(cfg.DATASETS.TRAIN, cfg.DATASETS.TEST)  # the classes now known
        if uses_panoptic_mapper(cfg, dicts):  # its targets come from the PNGs, not annotations
            kwargs["mapper"] = PanopticDatasetMapper(cfg, True)
        else:
            checks.check_training_targets(cfg, dicts, ", ".join(cfg.DATASETS.TRAIN))
            names, masks = cfg.DATASETS.TRAIN, cfg.MODEL.MASK_ON
            clean = checks.drop_invalid_annotations(dicts, names, "DATASETS.TRAIN", masks)
            checks.check_mask_format(clean if masks else (), names, cfg.INPUT.MASK_FORMAT)
            if any(a is not b for a, b in zip(clean, dicts)):  # a new sampler for the new list
                if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
                    clean = d2_build.filter_images_with_only_crowd_annotations(clean)
                kwargs = d2_build.build_detection_train_loader.from_config(cfg, dataset=clean)
            kwargs["mapper"] = ImageDatasetMapper(cfg, True)
        if kwargs["sampler"] is not None:
            kwargs["sampler"] = ResumableSampler(kwargs["sampler"])
        if not hasattr(self, "train_sampler"):  # PreciseBN builds another loader
            self.train_sampler = kwargs["sampler"]
        # drawn at the first step, the worker seeds would shift the generator of a resumed run
        seed = cfg.SEED if cfg.SEED >= 0 else int(torch.randint(2**31 - 1, ()).item())
        return d2_build.build_detection_train_loader(**kwargs, seed=seed + comm.get_rank())

    def build_hooks(self):
        # replace DefaultTrainer's checkpointer before the hooks take it; resume_or_load uses it too
        old = self.checkpointer
        kwargs = dict(old.checkpointables, save_to_disk=old.save_to_disk, warm_start=True)
        self.checkpointer = PANetCheckpointer(old.model, old.save_dir, **kwargs)
        per_iter = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        ret = [ResumeStateHook(self.train_sampler, per_iter)] + super().build_hooks()
        if self.cfg.SOLVER.SCALE_MOMENTUM:
            ret.insert(1, MomentumRescale(self.optimizer))
        if self.cfg.TEST.AUG.ENABLED:  # before PeriodicWriter: "*_TTA" reaches metrics.json
            at = len(ret) - 1 if isinstance(ret[-1], hooks.PeriodicWriter) else len(ret)
            ret.insert(at, hooks.EvalHook(0, self._test_with_TTA_and_save_results))
        return ret

    def _test_with_TTA_and_save_results(self):
        results = self.test_with_TTA(self.cfg, self.model)
        self._last_eval_results = OrderedDict(getattr(self, "_last_eval_results", {}) or {})
        self._last_eval_results.update(results)
        return results

    def resume_or_load(self, resume=True):
        """DefaultTrainer's; the config's solver values replace the checkpoint's, one line each."""
        config = [{k: g[k] for k in _SOLVER_KEYS if k in g} for g in self.optimizer.param_groups]
        base_lrs = list(getattr(self.scheduler, "base_lrs", []))
        if resume:
            check_last_checkpoint(self.checkpointer)
        if resume and self.checkpointer.has_checkpoint():
            self.iter = -1  # set by the checkpoint's trainer state (load_state_dict)
        super().resume_or_load(resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        name, lines = os.path.basename(self.checkpointer.get_checkpoint_file()), OrderedDict()
        if self.iter == -1:  # e.g. Detectron2's plain_train_net's: its LR schedule is not kept
            raise CheckpointError(
                f"--resume: the checkpoint {name!r} holds no trainer state (iteration, optimizer, "
                "schedule: weights only, or another training script's): --resume continues "
                "train_net.py's runs. Start from its weights with MODEL.WEIGHTS, without --resume."
            )
        # the optimizer's load_state_dict made new param groups
        for i, (group, ours) in enumerate(zip(self.optimizer.param_groups, config)):
            for k, value in ours.items():
                if (theirs := group.get(k, value)) == value:
                    continue
                lines[(self._solver_key(k, value, i), value, theirs)] = None
                group[k] = value
                if k == "initial_lr":  # the checkpoint's LR of this iteration, rescaled
                    group["lr"] = group["lr"] * value / theirs if theirs else value
        if base_lrs and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = base_lrs
        for key, value, theirs in lines:
            logger.warning(
                f"--resume: {key} is {value} in the config, {theirs} in the checkpoint {name!r}: "
                f"the run uses the config's {value} (from iteration {self.start_iter})."
            )
        if self.start_iter >= self.max_iter:
            logger.warning(
                f"--resume: the checkpoint {name!r} is at iteration {self.start_iter}, "
                f"SOLVER.MAX_ITER={self.max_iter}: nothing left to train."
            )

    def load_state_dict(self, state_dict):
        """DefaultTrainer's, its iteration checked (an integer >= 0)."""
        at = state_dict.get("iteration") if isinstance(state_dict, dict) else None
        if type(at) is not int or at < 0:
            name = os.path.basename(self.checkpointer.get_checkpoint_file())
            raise CheckpointError(
                f"--resume: the checkpoint {name!r} holds the trainer iteration {at!r}: it must "
                "be an integer >= 0 (a damaged or hand-edited file)."
            )
        super().load_state_dict(state_dict)

    def _solver_key(self, k, value, index):
        solver = self.cfg.SOLVER
        if k == "initial_lr" and not math.isclose(value, solver.BASE_LR):
            return f"the LR of parameter group {index} (SOLVER.BASE_LR x SOLVER.BIAS_LR_FACTOR)"
        if k == "weight_decay":
            for name in ("WEIGHT_DECAY", "WEIGHT_DECAY_NORM", "WEIGHT_DECAY_BIAS"):
                if solver.get(name) is not None and math.isclose(value, solver.get(name)):
                    return "SOLVER." + name
        return _SOLVER_KEYS[k]

    def train(self):
        """Runs training; returns the last evaluation's results. Raises TrainingDivergedError (NaN
        or infinite loss or weights) or TrainingInterrupted (Ctrl-C), with the last checkpoint."""
        train_loop = logging.getLogger("detectron2.engine.train_loop")
        train_loop.addFilter(_ONE_LINE_ERRORS)
        try:
            super().train()
        except (KeyboardInterrupt, FloatingPointError) as e:
            last = self.checkpointer.get_checkpoint_file() or None
            if isinstance(e, KeyboardInterrupt):
                raise TrainingInterrupted(self.iter, last) from None
            found = re.search(r"loss_dict = (\{.*\})", str(e), re.S)
            if found:
                losses = " ".join(found.group(1).split())
                losses = re.sub(r"np\.float\d+\(([^()]*)\)", r"\1", losses)  # NumPy 2's repr
                what = f"the loss became NaN or infinite: {losses}"
            else:  # the checkpointer's (weights), or Detectron2's of NaN boxes in the forward pass
                what = " ".join(str(e).split()).rstrip(".")
                with contextlib.suppress(AttributeError, KeyError):
                    loss, at = self.storage.latest()["total_loss"]
                    what += f" (the last total_loss: {loss:.4g}, at iteration {at})"
            named = repr(last) + " (named by last_checkpoint)" if last else "none"
            raise TrainingDivergedError(
                f"Training diverged at iteration {self.iter}: {what}. The last checkpoint written "
                f"before it: {named}. Try a lower SOLVER.BASE_LR, a longer SOLVER.WARMUP_ITERS or "
                "SOLVER.CLIP_GRADIENTS.ENABLED True.",
                last_checkpoint=last,
            ) from e
        finally:
            train_loop.removeFilter(_ONE_LINE_ERRORS)
        return getattr(self, "_last_eval_results", None)

    def build_writers(self):
        """DefaultTrainer's writers, kept (``event_writers``) for :meth:`after_train`."""
        self.event_writers = super().build_writers()
        return self.event_writers

    def after_train(self):
        """Every hook's ``after_train``, even after one fails; after training stopped early, no
        evaluation, and the hooks' errors logged in one line."""
        stopped, first = self.iter < self.max_iter, None
        self.storage.iter = self.iter
        for h in self._hooks:
            # UPSTREAM-WORKAROUND hooks-after-failed-training: D2 0.6's EvalHook evaluates after a
            # failure at the last iteration, and after_train stops at the first hook that fails.
            if stopped and isinstance(h, hooks.EvalHook):
                continue
            try:
                h.after_train()
            except Exception as e:
                if first is None and not stopped:
                    first = e
                    continue
                how = "stopped" if stopped else "failed"
                why = f"{type(e).__name__}: {' '.join(str(e).split())}"
                logger.warning(f"After training {how}, {type(h).__name__} could not finish: {why}")
        if stopped or first is not None:
            for writer in getattr(self, "event_writers", ()):
                with contextlib.suppress(Exception):  # closed even when its last flush fails
                    writer.close()
        if first is not None:
            raise first

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader; an empty dataset is one :class:`DatasetError`."""
        with cityscapes_api_alias():
            mapper = ImageDatasetMapper(cfg, False)
            try:
                return d2_build.build_detection_test_loader(cfg, dataset_name, mapper=mapper)
            except AssertionError:
                if DatasetCatalog.get(dataset_name):
                    raise
        json_file = MetadataCatalog.get(dataset_name).get("json_file", None)
        json_file = f" (json_file={json_file!r})" if json_file else ""
        raise DatasetError(
            f"Dataset {dataset_name!r} in DATASETS.TEST has no images{json_file}: nothing to "
            "evaluate. Give it images, or remove it from DATASETS.TEST."
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """:func:`panet_d2.evaluation.build_evaluator`; ground truth without invalid annotations."""
        evaluator = build_evaluator(cfg, dataset_name, output_folder)
        for e in getattr(evaluator, "_evaluators", [evaluator]):
            if isinstance(e, COCOEvaluator) and hasattr(e, "_coco_api"):
                checks.drop_invalid_coco_annotations(e._coco_api, dataset_name, cfg.MODEL.MASK_ON)
        return evaluator

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer's, writing files atomically, the random generators kept."""
        if isinstance(model, DistributedDataParallel):
            # all evaluate rank 0's BatchNorm buffers (the checkpoint's): D2's DDP broadcasts none
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        with preserved_rng_states(), atomic_output_files():
            return super().test(cfg, model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Results of Detectron2's ``GeneralizedRCNNWithTTA``, under "<task>_TTA"."""
        checks.check_tta(cfg)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(cfg, name, folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, GeneralizedRCNNWithTTA(cfg, model), evaluators)
        return OrderedDict((task + "_TTA", metrics) for task, metrics in results.items())
