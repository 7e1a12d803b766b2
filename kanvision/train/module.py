"""ImageClassifier: any zoo (or timm) model trained on images, with KAN-specific extras.

Takes primitives and builds the network itself (`timm.create_model`), so a config or a checkpoint's
hyper-parameters fully describe the run. Extras for KAN layers: a B-spline regularization weight and a
grid-update schedule (DDP-consistent, see grid_update.py).
"""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from kanvision.train.errors import ConfigError
from kanvision.train.grid_update import update_grids
from kanvision.models import count_parameters, kan_modules

__all__ = ["ConfigError", "ImageClassifier", "WarmupCosine"]



class WarmupCosine(LambdaLR):
    """Linear warm-up from 0, then cosine decay to min_lr_ratio x the base lr, stepped every batch.

    warmup_steps < 1 is a fraction of the run; total_steps=None is filled in by ImageClassifier from the
    trainer's estimate, so one config works for any dataset size, epoch count or device count.
    """

    def __init__(self, optimizer, warmup_steps: float = 0.05, total_steps: int | None = None,
                 min_lr_ratio: float = 0.01):
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        total = max(1, int(self.total_steps or 1))
        warm = int(self.warmup_steps * total) if self.warmup_steps < 1 else int(self.warmup_steps)
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ImageClassifier(L.LightningModule):
    def __init__(
        self,
        model: str = "kan_mixer_tiny_p4_32",
        kan: str | None = None,
        kan_hidden: int | None = None,
        kan_kwargs: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        num_classes: int = 10,
        drop_path_rate: float = 0.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        reg_weight: float = 0.0,
        grid_update_every: int = 0,
        grid_update_until: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = WarmupCosine,
        compile: bool | str = "auto",
        compile_mode: str = "default",
    ):
        """
        Args:
            model: a registered timm name (`timm.list_models("kan_*")` for the zoo).
            kan: what replaces the zoo model's channel MLPs: none (timm's MLP) or a KAN kind (`kanvision kinds`; None: none;
                leave None for plain timm models).
            kan_hidden: hidden width of each KAN MLP, a whole number (None: the zoo model's default: its
                embedding width for DeiT/Mixer, a single KAN layer for ConvMixer).
            kan_kwargs: KAN layer keywords, e.g. {grid_size: 5, spline_order: 3} (bspline) or {num_grids: 8}
                (rswaf).
            model_kwargs: any other keywords for timm.create_model (e.g. img_size, depth).
            num_classes: linked from the data by the CLI.
            mixup_alpha / cutmix_alpha: timm Mixup/CutMix (soft-target cross-entropy); 0 disables.
            reg_weight: weight of the B-spline layers' regularization_loss() (KAN paper's L1 + entropy).
            grid_update_every / grid_update_until: refit B-spline grids to the current batch every N optimizer
                steps while step <= until (0 disables).
            optimizer / lr_scheduler: callables (LightningCLI: class_path + init_args); default AdamW (lr 1e-3:
                a B-spline Mixer diverged at 2e-3 on CIFAR-10 here while the MLP trained) with WarmupCosine.
                AdamW/Adam become fused (one kernel for all parameters) when every parameter is on CUDA.
            compile: torch.compile the network for fit: true | false | auto (CUDA: on; CPU: see
                kanvision.train.callbacks.compile_by_default). ConvMixers on CUDA also train channels_last.
            compile_mode: torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune (CUDA
                graphs + autotuned kernels) | max-autotune-no-cudagraphs.
        """
        super().__init__()
        from kanvision.train.callbacks import check_compile_args
        check_compile_args(compile, compile_mode)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.model = self._build()
        self.counts = count_parameters(self.model)
        # KAN layers with a regularization_loss (B-spline); a plain list: not registered twice as submodules.
        self._regularized = [m for m in kan_modules(self.model) if hasattr(m, "regularization_loss")]
        k5 = min(5, num_classes)
        # train_eval: the data module's un-augmented training images, scored at each validation (second loader).
        for stage in ("train", "val", "test", "train_eval"):
            # No argument checks on the training metrics: they read label values on the host, a sync per step.
            check = stage != "train"
            setattr(self, f"{stage}_acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro", validate_args=check))
            setattr(self, f"{stage}_acc5", MulticlassAccuracy(num_classes, top_k=k5, average="micro", validate_args=check))
            if stage != "train":
                # The evaluation loss as a mean over images, weighted by batch size and summed over ranks in float:
                # Lightning's sync_dist mean truncates the rank-averaged batch count (5001 + 5000 images on 2 ranks
                # divide by 2 * 5000). nan_strategy="disable": a NaN loss must reach the divergence check, not be
                # dropped from the mean.
                setattr(self, f"{stage}_loss", MeanMetric(nan_strategy="disable"))
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            from timm.data import Mixup
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=label_smoothing,
                               num_classes=num_classes)

    def _build(self) -> torch.nn.Module:
        hp = self.hparams
        if not timm.is_model(hp.model):
            zoo = ", ".join(timm.list_models("kan_*"))
            raise ConfigError(f"unknown model {hp.model!r}: not registered with timm. The kanvision zoo: {zoo}")
        kw = dict(hp.model_kwargs or {}, num_classes=hp.num_classes)
        for key in ("kan", "kan_hidden", "kan_kwargs"):
            if hp[key] is not None:
                kw[key] = hp[key]
        if hp.drop_path_rate:
            kw["drop_path_rate"] = hp.drop_path_rate
        try:
            return timm.create_model(hp.model, **kw)
        except (ValueError, TypeError) as e:  # bad kan kind / option: the zoo's message says which and why
            raise ConfigError(f"cannot build {hp.model!r} with {kw}: {e}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ----------------------------------------------------------------------------------- training
    def on_fit_start(self) -> None:
        counts = {f"params/{k}": v for k, v in self.counts.items()}
        for logger in self.loggers:
            logger.log_hyperparams(counts)
        self.print(f"{self.hparams.model} kan={self.hparams.kan}: {self.counts['total']:,} parameters, "
                   f"{self.counts['kan']:,} in KAN layers")

    def on_train_batch_start(self, batch, batch_idx) -> None:
        hp = self.hparams
        step = self.global_step
        # Once per optimizer step: with gradient accumulation every micro-batch of a step sees the same
        # global_step, and refitting on each would change the function between the step's micro-batches.
        if (hp.grid_update_every and step % hp.grid_update_every == 0 and step <= hp.grid_update_until
                and getattr(self, "_grid_updated_at", None) != step):
            self._grid_updated_at = step
            update_grids(self.model, batch[0])  # no-op without B-spline layers

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.mixup is not None:
            x_mixed, soft = self.mixup(x, y)
            logits = self.model(x_mixed)
            loss = torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        if self.hparams.reg_weight:
            reg = sum(layer.regularization_loss() for layer in self._regularized)
            self.log("train/reg", reg, on_step=True, on_epoch=False)
            loss = loss + self.hparams.reg_weight * reg
        self.train_acc1(logits, y)
        self.train_acc5(logits, y)
        # In the progress bar only when there is one: Lightning turns bar values into numbers after every step,
        # a host sync per step.
        shown = self._trainer is not None and self.trainer.progress_bar_callback is not None
        self.log("train/loss", loss, prog_bar=shown, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        self.log("train/acc5", self.train_acc5, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        getattr(self, f"{stage}_acc1")(logits, y)
        getattr(self, f"{stage}_acc5")(logits, y)
        # add_dataloader_idx=False: with a second validation loader Lightning would otherwise log
        # "val/acc1/dataloader_idx_0", and ModelCheckpoint's monitor ("val/acc1") would never be found.
        # Each loader has its own names (val/*, train_eval/*), so nothing is averaged across the two.
        shown = stage != "train_eval"
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss.detach().float(), weight=y.shape[0])
        self.log(f"{stage}/loss", mean_loss, prog_bar=shown, add_dataloader_idx=False)
        self.log(f"{stage}/acc1", getattr(self, f"{stage}_acc1"), prog_bar=shown, add_dataloader_idx=False)
        self.log(f"{stage}/acc5", getattr(self, f"{stage}_acc5"), add_dataloader_idx=False)
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        # Loader 1 (ImageDataModule.val_dataloader): training images without augmentation, for the gap.
        return self._eval_step(batch, "train_eval" if dataloader_idx == 1 else "val")

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(x).softmax(-1)

    def configure_callbacks(self):
        # Part of the training, not of one CLI: any Trainer fitting this module resumes exactly. Not again
        # when the same Trainer tests after fitting (Lightning would announce it replaced the first one).
        # Lightning's LearningRateMonitor logs each parameter group's learning rate every step (lr-<Optimizer>/pg1,
        # /pg2: the decayed and the not-decayed group), where a logger records it; train/images_per_s (and FLOP/s,
        # MFU) come from TrainThroughput.
        from lightning.pytorch.callbacks import LearningRateMonitor

        from kanvision.train.callbacks import FastStep, TrainThroughput
        from kanvision.train.resume import ExactResume
        have = self.trainer.callbacks if self._trainer is not None else []
        wanted = {ExactResume: ExactResume, TrainThroughput: TrainThroughput, FastStep: FastStep}
        if self._trainer is not None and self.trainer.loggers:
            wanted[LearningRateMonitor] = lambda: LearningRateMonitor(logging_interval="step")
        return [make() for cls, make in wanted.items() if not any(isinstance(h, cls) for h in have)]

    def parameter_groups(self) -> list[dict]:
        """timm's weight-decay grouping, as DeiT's recipe: biases, norms and other 1-D parameters, and what the
        model's `no_weight_decay()` names (position embeddings, class tokens), get weight_decay 0; the rest
        keep the optimizer's own value. Decaying a LayerNorm gain or a bias towards 0 only constrains the
        model's scale, which is why the published recipes exclude them."""
        skip = set(self.model.no_weight_decay()) if hasattr(self.model, "no_weight_decay") else set()
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        from kanvision.train.callbacks import fused_on_cuda
        optimizer = fused_on_cuda(self.optimizer_factory(self.parameter_groups()))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if getattr(scheduler, "total_steps", 0) is None:
            scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The record kanvision.hub.checkpoints reads to export / load the network without this class."""
        hp = self.hparams
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data = dm.describe() if dm is not None and hasattr(dm, "describe") else {}
        metrics = {k: float(v) for k, v in (self.trainer.callback_metrics.items() if self._trainer else [])
                   if getattr(v, "numel", lambda: 1)() == 1}
        checkpoint["kanvision"] = dict(
            model=hp.model, kan=hp.kan, kan_hidden=hp.kan_hidden, kan_kwargs=hp.kan_kwargs,
            num_classes=hp.num_classes, model_kwargs=dict(hp.model_kwargs or {}),
            dataset=data.get("dataset"), class_names=data.get("class_names"), mean=data.get("mean", [0.5] * 3),
            std=data.get("std", [0.5] * 3), img_size=data.get("img_size"), metrics=metrics,
            params=dict(self.counts))
