"""The trainable-weight EMA (lightning_modules.callbacks.TrainableEMA) against the closed form of plain SGD.

With loss = sum(g * w) and SGD at rate lr the weights after n steps are w0 - n lr g exactly, so the average the
callback must hold is a known sequence: s_1 = w_1, s_k = d_k s_{k-1} + (1 - d_k) w_k with diffusers' warm-up decay
d_k = min(decay, k / (9 + k)).
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from lightning_modules.callbacks import TrainableEMA

W0 = torch.tensor([1.0, -2.0, 0.5])
G = torch.tensor([0.3, -0.1, 0.2])
LR = 0.5
DECAY = 0.8


class LinearLoss(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(W0.clone())
        self.frozen = torch.nn.Parameter(torch.tensor([7.0]), requires_grad=False)
        self.seen_in_validation: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        return (G * self.w).sum() + 0.0 * batch.sum()

    def validation_step(self, batch, batch_idx):
        if not self.trainer.sanity_checking:
            self.seen_in_validation.append((int(self.trainer.global_step), self.w.detach().clone()))

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=LR)


def raw_weights(step: int) -> torch.Tensor:
    return W0 - step * LR * G


def expected_average(steps: int) -> torch.Tensor:
    average = raw_weights(1)
    for k in range(2, steps + 1):
        d = min(DECAY, k / (9 + k))
        average = d * average + (1 - d) * raw_weights(k)
    return average


def fit(tmp_path, max_steps: int, ckpt_path: str | None = None) -> tuple[LinearLoss, ModelCheckpoint]:
    torch.manual_seed(0)
    module = LinearLoss()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=4, num_sanity_val_steps=0,
                        callbacks=[checkpoint, TrainableEMA(DECAY)])
    data = DataLoader(torch.zeros(64, 1), batch_size=1)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=DataLoader(torch.zeros(1, 1)), ckpt_path=ckpt_path,
                weights_only=False)
    return module, checkpoint


def test_the_module_ends_the_fit_holding_the_average_of_its_trainable_weights(tmp_path):
    module, _ = fit(tmp_path, max_steps=12)
    torch.testing.assert_close(module.w.detach(), expected_average(12))
    assert float(module.frozen) == 7.0


def test_validation_measures_the_average_and_training_continues_from_the_raw_weights(tmp_path):
    module, _ = fit(tmp_path, max_steps=12)
    assert [step for step, _ in module.seen_in_validation] == [4, 8, 12]
    for step, seen in module.seen_in_validation:
        torch.testing.assert_close(seen, expected_average(step))
    # the two differ at every validation, so the figures above are the average's, not the raw weights'
    assert all(not torch.allclose(expected_average(step), raw_weights(step)) for step in (4, 8, 12))


def test_a_checkpoint_holds_the_average_as_its_weights_and_the_raw_weights_beside_them(tmp_path):
    fit(tmp_path, max_steps=12)
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(state["state_dict"]["w"], expected_average(12))
    torch.testing.assert_close(state["trainable_ema"]["raw"]["w"], raw_weights(12))
    assert set(state["trainable_ema"]["raw"]) == {"w"}  # frozen tensors are neither averaged nor kept twice


def test_a_resumed_fit_continues_both_the_weights_and_the_average(tmp_path):
    fit(tmp_path / "first", max_steps=8)
    module, _ = fit(tmp_path / "second", max_steps=12, ckpt_path=str(tmp_path / "first" / "last.ckpt"))
    torch.testing.assert_close(module.w.detach(), expected_average(12))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="EMA decay must lie in"):
        TrainableEMA(decay)
