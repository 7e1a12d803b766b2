"""Training callbacks: a lean step (torch.compile, channels_last, fused AdamW) and throughput (images/s,
FLOP/s, MFU) measured without a host sync per step.

`FastStep` (fit start): compiles the network in place (`nn.Module.compile`: state-dict keys unchanged) when
the module's `compile` says so (`auto`: on CUDA; on a CPU `compile_by_default`), with `compile_mode` (CUDA
graphs: reduce-overhead / max-autotune), and puts ConvMixers' weights channels_last on CUDA (cuDNN then runs
every convolution in NHWC, the layout its tensor-core kernels want; the first convolution converts the NCHW
input itself). `fused_on_cuda` rebuilds a fresh Adam/AdamW with `fused=True` when all its parameters are on
CUDA (one kernel for the whole update instead of a loop over tensors).

`TrainThroughput` is Lightning's ThroughputMonitor (lightning.pytorch.callbacks.ThroughputMonitor: its
`Throughput` windows, its table of device peaks for MFU) fed differently. ThroughputMonitor synchronizes CUDA
after every batch to read the clock; here the device is synchronized only at the steps whose metrics are
written (every `log_every_n_steps`, and the fit's last step), and the samples and FLOPs of the steps in between
are counted from the batch shapes, which needs no sync. A rate is the images (FLOPs) of one logging interval
over its wall time (the first interval starts at training start, so it includes the first steps' warm-up and
compilation): exact over the interval, since the interval ends with a sync. Validation time is left out.

Logged at each logging step (rank 0; no collective):
- `train/images_per_s`: the job's training images per second (every rank's, summed: ranks step together),
  the name scripts/ship_pretrained.py and the GPU self-check read;
- ThroughputMonitor's `train/device/samples_per_sec`, `train/device/flops_per_sec` and, where Lightning knows
  the device's peak for the precision (`get_available_flops`), `train/device/mfu`.

FLOPs per image are the model's forward FLOPs (kanvision.analysis.params.count_flops: matrix products and KAN
bases, counted on a meta-device copy at the first batch's input shape) x 3 for forward + backward (the backward
of a matrix product is two products of the same size).
"""
from __future__ import annotations

import time

import torch
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_warn

from kanvision.device import synchronize

__all__ = ["COMPILE_MODES", "FastStep", "TrainThroughput", "check_compile_args", "compile_by_default", "fused_on_cuda",
           "train_flops_per_image"]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_args(compile, mode: str) -> None:
    """ValueError (ConfigError) naming the argument when `compile` or `compile_mode` is not an allowed value."""
    from kanvision.train.errors import ConfigError

    if compile not in (True, False, "auto", "true", "false"):
        raise ConfigError(f"compile must be one of auto, true, false; got {compile!r}")
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}; got {mode!r}")


def compile_by_default(device: torch.device) -> bool:
    """`compile: auto`: on CUDA yes. On a CPU no, from measurements on this repository's 2-core AMD EPYC VM
    (kan_mixer_tiny_p4_32, kan none, batch 128, AdamW, fp32, 2 torch threads; eager and compiled training steps
    alternated in one process, 12 pairs, so both saw the same load; medians): with the machine nearly idle
    (load average 1.5-2.7) eager 659 ms/step (194 img/s), compiled 715 ms (179 img/s), the compiled step's speed
    0.89x eager's per pair (a second run: 164 vs 149 img/s, 0.83x); under load 7-8 (shared with other jobs)
    eager 13.0 img/s, compiled 10.1 img/s. Compiling cost 23-32 s with a warm inductor cache and 155 s cold
    before the first step. No gain on this CPU, and a fixed cost longer than most CPU fits."""
    return device.type == "cuda"


def _wants_compile(module, device: torch.device) -> bool:
    value = getattr(module.hparams, "compile", "auto")
    if value in ("auto", None):
        return compile_by_default(device)
    return value in (True, "true")


def _is_convmixer(model) -> bool:
    return "convmixer" in type(model).__name__.lower()


class FastStep(Callback):
    """At fit start, on the module's network: channels_last for ConvMixers on CUDA, then torch.compile."""

    def on_fit_start(self, trainer, pl_module) -> None:
        model, device = getattr(pl_module, "model", None), pl_module.device
        if model is None:
            return
        if device.type == "cuda" and _is_convmixer(model):
            model.to(memory_format=torch.channels_last)  # same Parameter objects: the optimizer keeps them
        if _wants_compile(pl_module, device) and not getattr(model, "_compiled_call_impl", None):
            model.compile(mode=getattr(pl_module.hparams, "compile_mode", "default"))


def fused_on_cuda(optimizer):
    """`optimizer` as a fused Adam/AdamW (same groups, same settings) when every parameter is on CUDA and it
    did not choose `fused`/`foreach` itself; any other optimizer unchanged. Call before it has state."""
    kinds = (torch.optim.Adam, torch.optim.AdamW)
    if type(optimizer) not in kinds or optimizer.state or optimizer.defaults.get("fused") is not None:
        return optimizer
    if optimizer.defaults.get("foreach") or optimizer.defaults.get("differentiable"):
        return optimizer
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not params or not all(p.is_cuda and p.is_floating_point() for p in params):
        return optimizer
    import inspect

    groups = [{**g, "fused": True, "foreach": None} for g in optimizer.param_groups]
    accepted = inspect.signature(type(optimizer).__init__).parameters  # defaults can hold internal keys
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(groups, **{**settings, "fused": True, "foreach": None})


def _batch_size(batch) -> int:
    return len(batch[1])


def train_flops_per_image(module, input_shape) -> int | None:
    """Forward + backward FLOPs of one image of shape `input_shape` (C, H, W) through `module`'s network (3 x
    count_flops of a meta-device copy built from its hyper-parameters); None if the count fails."""
    from kanvision.analysis.params import count_flops

    try:
        with torch.device("meta"):
            model = module._build() if hasattr(module, "_build") else None
        if model is None:
            return None
        flops = count_flops(model.eval(), torch.empty(1, *input_shape, device="meta"))
        return 3 * (flops["matmul"] + flops["basis"])
    except Exception as e:  # an op without a meta kernel: no FLOP/s or MFU, said once
        rank_zero_warn(f"kanvision: FLOPs not counted ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}):"
                       " train/device/mfu is not logged")
        return None


class TrainThroughput(ThroughputMonitor):
    """ThroughputMonitor with one device sync per logging step instead of per step (module docstring)."""

    def __init__(self, window_size: int = 2):
        # window_size 2: each rate spans the last logging interval (updates happen only at logging steps).
        super().__init__(batch_size_fn=_batch_size, window_size=window_size)
        self.flops_per_image: int | None = None
        self._counted = False

    # Only training is timed: the parent's per-batch validation/test/predict updates would sync every batch.
    def on_validation_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_test_start(self, *args, **kwargs) -> None:
        pass

    def on_test_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_predict_start(self, *args, **kwargs) -> None:
        pass

    def on_predict_batch_end(self, *args, **kwargs) -> None:
        pass

    def on_train_start(self, trainer, pl_module) -> None:
        synchronize(trainer.strategy.root_device)
        self._t0 = time.perf_counter()
        self._paused = 0.0
        self._images = self._steps = self._flops = 0
        if RunningStage.TRAINING in self._throughputs:
            # The window opens at training start, so the first logging step (or a fit shorter than one
            # logging interval) already has a rate; later rates span one logging interval each.
            self._throughputs[RunningStage.TRAINING].reset()
            self._throughputs[RunningStage.TRAINING].update(time=0.0, batches=0, samples=0, flops=0)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.stage != RunningStage.VALIDATING or trainer.sanity_checking or not hasattr(self, "_t0"):
            return
        synchronize(trainer.strategy.root_device)  # once per validation: its time is not training time
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if getattr(self, "_val_t0", None) is None:
            return
        synchronize(trainer.strategy.root_device)
        self._paused += time.perf_counter() - self._val_t0
        self._val_t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not hasattr(self, "_t0"):
            return
        n = self.batch_size_fn(batch)
        if not self._counted:
            self._counted = True
            self.flops_per_image = train_flops_per_image(pl_module, tuple(batch[0].shape[1:]))
        self._images += n
        self._steps += 1
        if self.flops_per_image:
            self._flops += n * self.flops_per_image
        if trainer.fit_loop._should_accumulate():
            return
        last = (0 <= trainer.max_steps <= trainer.global_step
                or (trainer.is_last_batch and trainer.max_epochs is not None
                    and trainer.current_epoch + 1 >= trainer.max_epochs > 0))
        if not (trainer._logger_connector.should_update_logs or last):  # the fit's last step reports too
            return
        if not trainer.is_global_zero:
            return
        synchronize(trainer.strategy.root_device)  # the one sync: the interval's queued work is done
        throughput = self._throughputs[RunningStage.TRAINING]
        throughput.update(time=time.perf_counter() - self._t0 - self._paused, batches=self._steps,
                          samples=self._images, flops=self._flops or None)
        self._flops = 0
        metrics = throughput.compute()
        if "device/samples_per_sec" not in metrics:
            return
        logged = {"train/images_per_s": metrics["device/samples_per_sec"] * trainer.world_size}
        for key in ("device/samples_per_sec", "device/flops_per_sec", "device/mfu"):
            if key in metrics:
                logged[f"train/{key}"] = metrics[key]
        for key, value in logged.items():
            pl_module.log(key, float(value), on_step=True, on_epoch=False, rank_zero_only=True)
