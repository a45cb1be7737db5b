"""Stage-1 under DDP on CPU: 2 processes (ddp_spawn, gloo) train the compact generator on different scenes; the
trainable weights stay identical across the processes and are exactly what the checkpoint holds (and all it holds)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules.config import load_config
from lightning_modules.stage1 import Stage1Module, build
from lightning_modules.tasks import check_trainer_config

OVERRIDES = [
    "data.height=16", "data.width=16", "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
    "data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.synthetic.num_test=4",
    "model.compact.unet.block_out_channels=[16, 32]",
    "model.compact.unet.down_block_types=[DownBlock2D, CrossAttnDownBlock2D]",
    "model.compact.unet.up_block_types=[CrossAttnUpBlock2D, UpBlock2D]", "model.compact.unet.cross_attention_dim=16",
    "model.compact.unet.attention_head_dim=8", "eval.num_steps=1", "eval.K_px_m=[2.0]",
    # every compact parameter gets a gradient every step: plain ddp_spawn (no unused-parameter search) must work
    "trainer.strategy=ddp_spawn", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "trainer.max_time=null",
]


class RecordEachRank(L.Callback):
    """Each process writes its trainable weights (at the start and the end of fit) and the scenes it trained on."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = str(out_dir)
        self.indices: list[int] = []
        self.start: dict[str, torch.Tensor] = {}

    @staticmethod
    def _weights(module: Stage1Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.trainable_named_parameters().items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self._weights(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.indices += [int(i) for i in batch["index"]]

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"start": self.start, "end": self._weights(pl_module), "indices": self.indices,
                    "world_size": trainer.world_size, "step": trainer.global_step},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_spawn_two_processes_keep_identical_trainable_weights_and_checkpoint_only_those(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    L.seed_everything(0, verbose=False)
    cfg = load_config(["stage1", "trainer/ddp_sim"], OVERRIDES)
    trainer_cfg = check_trainer_config(cfg.trainer)
    assert (trainer_cfg["devices"], trainer_cfg["strategy"], trainer_cfg["accelerator"]) == (2, "ddp_spawn", "cpu")
    module, dm = build(cfg)
    trainable = set(module.trainable_named_parameters())
    # as tools/fit.py's Stage-1 run does: last + best by val/psnr
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-step{step}", monitor="val/psnr",
                                 mode="max", save_last=True, save_top_k=1, auto_insert_metric_name=False)
    trainer = L.Trainer(default_root_dir=str(tmp_path), logger=False, enable_model_summary=False,
                        callbacks=[checkpoint, RecordEachRank(tmp_path)], **trainer_cfg)
    trainer.fit(module, datamodule=dm)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 2 for r in ranks)  # 16 scenes / (2 processes x batch 4)
    # the processes trained on different scenes (DistributedSampler), 8 each, together all 16
    seen = [set(r["indices"]) for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1] and seen[0] | seen[1] == set(range(16))
    start, end = ranks[0]["start"], ranks[0]["end"]
    assert set(end) == trainable
    changed = [n for n in trainable if not torch.equal(start[n], end[n])]
    assert len(changed) > len(trainable) // 2, f"only {len(changed)} of {len(trainable)} tensors trained"
    for name in trainable:  # gradients were averaged: bit-identical weights in both processes
        assert torch.equal(ranks[1]["start"][name], start[name]), name
        assert torch.equal(ranks[1]["end"][name], end[name]), name

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert set(ckpt["state_dict"]) == trainable and ckpt["stage1_trainable_keys"] == sorted(trainable)
    for name in trainable:
        assert torch.equal(ckpt["state_dict"][name], end[name]), name
    # ddp_spawn hands rank 0's weights back to this process; a fresh module restores them from the checkpoint
    assert all(torch.equal(p.detach(), end[n]) for n, p in module.trainable_named_parameters().items())
    fresh = Stage1Module(module.cfg)
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    assert all(torch.equal(p.detach(), end[n]) for n, p in fresh.trainable_named_parameters().items())
