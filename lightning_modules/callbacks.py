"""Lightning callbacks: Stage-2 image grids (RGB | stack | prediction | GT | error) as PNG and in TensorBoard; the
time a fit spends in validation (what a wall-clock budget pays for it); the steady training step rate (what a step
budget should be sized by)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch


def depth_panel_rows(batch: Mapping[str, Any], pred_m: torch.Tensor, num: int = 4, max_rel_error: float = 0.5) -> list[list[np.ndarray]]:
    """Rows of uint8 [H,W,3] pictures, one row per sample: RGB | last stack frame | prediction | GT | |rel. error|.

    Prediction and GT share the GT's colour range (inverse depth, turbo); the error map shows |pred - gt| / gt from
    0 (black) to ``max_rel_error`` (white-hot), black where the depth is invalid.
    """
    from bokeh.io import colorize_depth

    rows = []
    for i in range(min(num, pred_m.shape[0])):
        gt = batch["depth_m"][i].detach().cpu().float()
        valid = batch["valid"][i].detach().cpu() if "valid" in batch else gt > 0
        pred = pred_m[i].detach().cpu().float()
        values = gt[valid]
        lo, hi = (float(values.quantile(0.02)), float(values.quantile(0.98))) if values.numel() else (None, None)
        err = torch.where(valid, (pred - gt).abs() / gt.clamp_min(1e-6), torch.zeros_like(gt))
        err_img = colorize_depth(err.clamp(1e-6, max_rel_error), vmin=0.0, vmax=max_rel_error, cmap="inferno", inverse=False)
        err_img[~valid[0].numpy()] = 0
        row = [batch["image"][i].detach().cpu().float()]
        stack = batch.get("stack")
        if stack is not None:
            row.append(stack[i, -1].detach().cpu().float())
        row += [colorize_depth(pred, vmin=lo, vmax=hi), colorize_depth(torch.where(valid, gt, torch.zeros_like(gt)), vmin=lo, vmax=hi), err_img]
        rows.append(row)
    return rows


GRID_LABELS = ["RGB", "stack[-1]", "prediction", "GT", "|rel err|"]


class DepthImageLogger(L.Callback):
    """Writes a grid of the first validation batch each validation epoch (and of the first test batch) to
    ``<folder>/val_epoch<NNN>.png`` / ``test.png`` and to TensorBoard when a TensorBoardLogger is attached.
    Rank zero only; the images are whatever rank zero saw.
    """

    def __init__(self, folder: str | Path, num_images: int = 4) -> None:
        self.folder = Path(folder)
        self.num_images = num_images

    def _write(self, trainer: L.Trainer, batch: Mapping[str, Any], pred: torch.Tensor, tag: str, name: str) -> None:
        from bokeh.io import image_grid, write_image

        rows = depth_panel_rows(batch, pred, self.num_images)
        labels = GRID_LABELS if batch.get("stack") is not None else [GRID_LABELS[0]] + GRID_LABELS[2:]
        grid = image_grid(rows, labels=labels)
        write_image(self.folder / name, grid)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image(tag, grid, global_step=trainer.global_step, dataformats="HWC")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and trainer.is_global_zero and not trainer.sanity_checking and isinstance(outputs, torch.Tensor):
            self._write(trainer, batch, outputs, "val/depth", f"val_epoch{trainer.current_epoch:03d}.png")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx == 0 and trainer.is_global_zero and isinstance(outputs, torch.Tensor):
            self._write(trainer, batch, outputs, "test/depth", "test.png")


class ValidationTime(L.Callback):
    """Seconds spent in validation loops during ``fit`` (sanity check included), and how many ran.

    Lightning's own Timer keeps only the last validation's start and end; a fit under ``trainer.max_time`` needs the
    sum to know how many training steps its validations cost.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.count = 0
        self._start: float | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.count += 1
            self._start = None


class TrainingRate(L.Callback):
    """Training steps per second once the first ``skip_steps`` optimizer steps are done, validation excluded.

    A fit's overall rate (steps / seconds) counts the loader processes' start-up, the first steps' allocations and
    the validations; on a GPU, where steps take milliseconds, that start-up can be most of a short fit. This rate is
    what a longer run of the same config will sustain. ``steps_per_s`` stays None until a step after the skipped ones
    has been timed.
    """

    def __init__(self, skip_steps: int = 50) -> None:
        if skip_steps < 1:
            raise ValueError(f"skip_steps must be >= 1, got {skip_steps}")
        self.skip_steps = skip_steps
        self.steps_per_s: float | None = None
        self._start: tuple[float, int] | None = None  # (time, global step) where the timed window opens
        self._validation_s = 0.0
        self._validation_start: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now, step = time.perf_counter(), int(trainer.global_step)
        if self._start is None:
            if step >= self.skip_steps:
                self._start, self._validation_s = (now, step), 0.0
            return
        seconds = now - self._start[0] - self._validation_s
        if step > self._start[1] and seconds > 0:
            self.steps_per_s = (step - self._start[1]) / seconds

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and trainer.state.fn == "fit":
            self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is not None:
            self._validation_s += time.perf_counter() - self._validation_start
            self._validation_start = None


class TrainableEMA(L.Callback):
    """An exponential moving average of the module's trainable parameters (diffusers' ``EMAModel``), swapped in for
    validation, saved as the checkpoint's weights and left in the module when the fit ends.

    Why not Lightning's ``WeightAveraging``: it deep-copies the whole LightningModule, a frozen FLUX backbone
    included (twice the memory of a 12 B model); here only what trains is averaged (Stage-1's adapter, or the
    compact network whole). The decay is diffusers' schedule: ``min(decay, (1 + n) / (10 + n))`` after n updates,
    so the average does not stay anchored to the random init in a short fit.

    Checkpoints: ``state_dict`` holds the averaged weights (what validation measured, what a loaded checkpoint should
    run); ``trainable_ema`` holds the raw training weights and the averaging state, so that a resumed fit continues
    both. A checkpoint written without this callback starts the average from its weights.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.ema = None  # diffusers.training_utils.EMAModel, made when the fit starts
        self._names: list[str] = []
        self._params: list[torch.nn.Parameter] = []  # the trainable parameters, fixed for the fit: not re-listed per step
        self._resume: dict[str, Any] | None = None
        self._swapped = False  # the module holds the average, the raw weights wait in the EMAModel
        self._validation_swap = False
        self._last_step = 0  # the trainer's global step at the last update: one update per optimizer step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from diffusers.training_utils import EMAModel

        named = [(name, p) for name, p in pl_module.named_parameters() if p.requires_grad]
        self._names = [name for name, _ in named]
        self._params = params = [p for _, p in named]
        # after a restore the module holds the checkpoint's averaged weights; the averaging state and the raw
        # training weights come back from the checkpoint's trainable_ema, and training continues from the raw ones
        self.ema = EMAModel(params, decay=self.decay)
        if self._resume is not None:
            self.ema.load_state_dict(self._resume["ema"])
            self.ema.to(device=pl_module.device)
            raw = self._resume["raw"]
            with torch.no_grad():
                for name, p in named:
                    p.copy_(raw[name].to(p.device, p.dtype))
            self._resume = None
        self._last_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.ema is not None and int(trainer.global_step) > self._last_step:
            self.ema.step(self._params)
            self._last_step = int(trainer.global_step)

    def _swap_in(self, pl_module: L.LightningModule) -> None:
        if self.ema is not None and not self._swapped:
            self.ema.store(self._params)
            self.ema.copy_to(self._params)
            self._swapped = True

    def _swap_out(self, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self.ema.restore(self._params)
            self._swapped = False

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not self._swapped:
            self._swap_in(pl_module)
            self._validation_swap = True

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_swap:
            self._swap_out(pl_module)
            self._validation_swap = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the average stays in the module; the raw weights are kept for a checkpoint written after this
        # (ModelCheckpoint's last.ckpt at train end), so that resuming from it still continues the raw weights
        self._swap_in(pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is None:
            return
        state = checkpoint["state_dict"]
        # the raw weights are the module's unless the average is swapped in (during validation, after the fit)
        raw_params = self.ema.temp_stored_params if self._swapped else self._params
        ema_state = dict(self.ema.state_dict(), shadow_params=[s.detach().cpu().clone() for s in self.ema.shadow_params])
        checkpoint["trainable_ema"] = {
            "raw": {name: p.detach().cpu().clone() for name, p in zip(self._names, raw_params)}, "ema": ema_state}
        for name, shadow in zip(self._names, self.ema.shadow_params):
            state[name] = shadow.detach().clone()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resume = checkpoint.get("trainable_ema")
