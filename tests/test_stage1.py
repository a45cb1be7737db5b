"""Stage-1 Lightning wiring: data (physics targets, real pairs as-is), training, trainable-only checkpoints, export."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_modules.config import load_config
from lightning_modules.stage1 import (PairManifest, Stage1Module, build, export_generator, load_generator,
                                      nearest_subject_focus)

TINY = [
    "data.height=16", "data.width=16", "data.batch_size=4", "data.eval_batch_size=4",
    "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.num_test=4",
    "model.compact.unet.block_out_channels=[16, 32]", "model.compact.unet.norm_num_groups=8",
    "model.compact.unet.cross_attention_dim=16", "model.compact.unet.attention_head_dim=8", "eval.num_steps=2",
    "k.min=0.5", "k.max=2.0", "eval.K_px_m=[1.0]",
]


def tiny_module(config: str = "configs/stage1.yaml", extra: list[str] | None = None):
    cfg = load_config([config], TINY + (extra or []))
    return build(cfg)


def test_a_few_training_steps_reduce_the_loss_on_physics_targets():
    torch.manual_seed(0)
    module, dm = tiny_module(extra=["optim.lr=0.003"])
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    K = torch.tensor([0.5, 1.0, 1.5, 2.0])
    target = module.targets_for(batch, K)
    assert (target - batch["image"]).abs().mean() > 1e-3  # the physics render actually blurs
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    noise = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    null = torch.zeros(4, dtype=torch.bool)

    def loss() -> torch.Tensor:
        return module.generator.training_loss(batch["image"], target, K, null, t, noise)["loss"]

    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    with torch.no_grad():
        before = float(loss())
    for _ in range(15):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < 0.7 * before, (before, after)


def test_flux_module_checkpoint_holds_only_adapter_weights_and_round_trips():
    module, _ = tiny_module("configs/stage1_flux_tiny.yaml", ["data.height=16", "data.width=16"])
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".processor." in n or ".adapter." in n for n in trainable)
    with torch.no_grad():
        for p in module.generator.adapter.parameters():
            p.add_(0.05)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == trainable
    n_backbone = sum(p.numel() for n, p in module.named_parameters() if not p.requires_grad)
    assert n_backbone > 0 and sum(v.numel() for v in ckpt["state_dict"].values()) < sum(
        p.numel() for p in module.parameters())
    fresh, _ = tiny_module("configs/stage1_flux_tiny.yaml", ["data.height=16", "data.width=16"])
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    for (n, a), (_, b) in zip(module.generator.adapter.state_dict().items(), fresh.generator.adapter.state_dict().items()):
        assert torch.equal(a, b), n
    bad = {"state_dict": {"generator.adapter.k_embed.null": torch.zeros(3)}}
    with pytest.raises(ValueError, match="missing"):
        fresh.on_load_checkpoint(bad)


def test_flux_module_trains_with_lightning_two_steps(tmp_path):
    import lightning as L

    module, dm = tiny_module("configs/stage1_flux_tiny.yaml", ["data.height=16", "data.width=16"])
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if not p.requires_grad)
    assert math.isfinite(float(trainer.callback_metrics["val/psnr"]))


def test_real_pairs_are_used_as_they_are(tmp_path):
    from bokeh.io import write_image

    g = torch.Generator().manual_seed(0)
    sharp, real = torch.rand(3, 24, 24, generator=g), torch.rand(3, 24, 24, generator=g)
    write_image(tmp_path / "s.png", sharp)
    write_image(tmp_path / "b.png", real)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "s.png", "target": "b.png",
                                                      "camera": {"f_mm": 50, "f_number": 1.8, "focus_m": 2.0,
                                                                 "sensor_width_mm": 22.3}}) + "\n")
    ds = PairManifest(tmp_path / "pairs.jsonl", 24, 24)
    item = ds[0]
    assert torch.allclose(item["target"], torch.round(real * 255) / 255, atol=1e-6)
    from physics.camera import k_from_lens

    assert math.isclose(float(item["K_px_m"]), float(k_from_lens(50, 1.8, 2.0, 24, sensor_width_mm=22.3)), rel_tol=1e-5)
    module, _ = tiny_module()
    batch = {k: v[None] for k, v in item.items()}
    assert torch.equal(module.targets_for(batch, batch["K_px_m"]), batch["target"])
    assert torch.equal(module.draw_k(batch), batch["K_px_m"].float())


def test_nearest_subject_focus_policy():
    depth = torch.linspace(1.0, 5.0, 100).view(1, 10, 10)
    assert math.isclose(nearest_subject_focus(depth), float(torch.quantile(depth.flatten(), 0.05)), rel_tol=1e-6)
    with pytest.raises(ValueError, match="no valid"):
        nearest_subject_focus(torch.zeros(1, 4, 4))


def test_export_and_load_generator_give_the_same_frames(tmp_path):
    module, _ = tiny_module()
    with torch.no_grad():
        for p in module.generator.net.unet.conv_out.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    module.generator.eval()
    export_generator(module, tmp_path)
    gen, meta = load_generator(tmp_path)
    image = torch.rand(3, 16, 24)
    a = module.generator.generate_stack(image, [0.75, 1.5], num_steps=2).frames
    b = gen.generate_stack(image, [0.75, 1.5], num_steps=2).frames
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a[0, 0], image, atol=1e-3)
    assert meta["k"]["min"] == 0.5 and meta["resolution"] == 16
    # weights that do not fit the configured network are refused, naming keys
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "generator.safetensors"))
    state.pop(next(iter(state)))
    save_file(state, str(tmp_path / "generator.safetensors"))
    with pytest.raises(ValueError, match="mismatching keys"):
        load_generator(tmp_path)


def test_stage1_module_config_errors_name_the_problem():
    from lightning_modules.config import ConfigError

    with pytest.raises(ConfigError, match="model.kind"):
        tiny_module(extra=["model.kind=unet3d"])
    with pytest.raises(ConfigError, match="data.kind"):
        tiny_module(extra=["data.kind=video"])
