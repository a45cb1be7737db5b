"""The same code on a GPU: CUDA results against the CPU's.

Skipped where torch sees no CUDA device (the development machines and CI); a session lent the GPU machine runs them
with ``bash scripts/device_smoke.sh`` (DEVELOPERS.md). Each test computes one thing on both devices from the same
weights and inputs and compares (float32 everywhere; TF32 matrix products are switched off so the tolerances are
float32's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_modules.config import load_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _float32_matmuls():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_physics_render_and_blur_estimate_on_cuda_match_the_cpu():
    from physics.dfd import estimate_blur_radius
    from physics.render import render_bokeh
    from physics.scenes import make_scene

    scene = make_scene(3, 64, 96, appearance_cues=1.0)
    image, depth = scene.image[None], scene.depth_m[None]
    cpu = render_bokeh(image, depth, 8.0, scene.focus_m)
    gpu = render_bokeh(image.cuda(), depth.cuda(), 8.0, scene.focus_m)
    assert gpu.is_cuda and (cpu - image).abs().mean() > 1e-3  # it blurs
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)
    radius_cpu = estimate_blur_radius(image, cpu[:, None], max_radius_px=6.0)  # [B,N,1,H,W] px
    radius_gpu = estimate_blur_radius(image.cuda(), gpu[:, None], max_radius_px=6.0)
    assert radius_gpu.is_cuda and radius_cpu.max() > 0.5
    # the same candidate wins almost everywhere; a near-tie may fall the other way in float32
    assert ((radius_gpu.cpu() - radius_cpu).abs() < 1e-2).float().mean() > 0.99


def test_stage1_layered_generator_trains_and_samples_on_cuda_as_on_the_cpu():
    from lightning_modules.stage1 import build

    cfg = load_config(["configs/stage1.yaml"], ["data.height=32", "data.width=32", "data.batch_size=4",
                                                "data.num_workers=0", "data.synthetic.num_train=4"])
    torch.manual_seed(0)
    module, datamodule = build(cfg)
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    K = torch.tensor([1.0, 2.0, 4.0, 6.0])
    frames = {}
    for device in ("cpu", "cuda"):
        module.to(device)
        on = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        target = module.targets_for(on, K.to(device))
        torch.manual_seed(1)
        null = torch.zeros(4, dtype=torch.bool, device=device)
        t = torch.full((4,), 0.5, device=device)
        noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(2)).to(device)
        loss = module.generator.training_loss(on["image"], target, K.to(device), null, t, noise)["loss"]
        loss.backward()
        module.zero_grad()
        frames[device] = (float(loss), module.generator.generate_stack(on["image"], [1.0, 4.0], num_steps=2,
                                                                        seed=0).frames.cpu())
    assert frames["cuda"][0] == pytest.approx(frames["cpu"][0], rel=1e-3)
    assert torch.allclose(frames["cuda"][1], frames["cpu"][1], atol=2e-3)


def test_stage2_module_on_cuda_matches_the_cpu():
    from lightning_modules.stage2 import Stage2Module

    torch.manual_seed(0)
    module = Stage2Module(load_config(["stage2_smoke"])).eval()
    image, stack = torch.rand(2, 3, 28, 28), torch.rand(2, 2, 3, 28, 28)
    K = torch.tensor([[2.0, 5.0], [2.0, 5.0]])
    with torch.no_grad():
        cpu = module(image, stack, K)
        gpu = module.cuda()(image.cuda(), stack.cuda(), K.cuda())
    assert gpu.is_cuda and torch.allclose(gpu.cpu(), cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_the_main_job_and_stage1_fit_on_one_gpu(tmp_path):
    """tools/fit.py with trainer.accelerator=gpu: Stage-2's smoke job (base and BokehDepth) and a short Stage-1 fit
    finish and test on the GPU."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _tools import load_tool

    fit = load_tool("fit").main
    stage2 = fit(["--config", "stage2_smoke", f"run.root={tmp_path / 's2'}", "trainer.accelerator=gpu",
                  "trainer.devices=1", "parallel_variants=false"])
    assert {"base", "bokehdepth"} <= set(stage2)
    stage1 = fit(["--config", "stage1", f"run.dir={tmp_path / 's1'}", "trainer.accelerator=gpu", "trainer.devices=1",
                  "trainer.max_epochs=1", "data.synthetic.num_train=64", "data.num_workers=2"])
    result = json.loads((tmp_path / "s1" / "result.json").read_text())
    assert result["steps"] == 8 == stage1["steps"]  # 64 scenes / batch 8, one epoch
    assert math.isfinite(result["test"]["psnr"]) and (tmp_path / "s1" / "generator.safetensors").is_file()
