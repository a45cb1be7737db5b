"""Stage-1 Lightning wiring: data (physics targets, real pairs as-is), training, trainable-only checkpoints, export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bokeh.generation.flow import sample_t
from lightning_modules.config import load_config
from lightning_modules.stage1 import build, export_generator, load_generator
from lightning_modules.stage1_data import PairManifest, nearest_subject_focus

TINY = [
    "data.height=16", "data.width=16", "data.batch_size=4", "data.eval_batch_size=4",
    "data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.num_test=4",
    "model.compact.unet.block_out_channels=[16, 32]",
    "model.compact.unet.down_block_types=[DownBlock2D, CrossAttnDownBlock2D]",
    "model.compact.unet.up_block_types=[CrossAttnUpBlock2D, UpBlock2D]", "model.compact.unet.norm_num_groups=8",
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
    trainable = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("generator.") for n in trainable)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if not p.requires_grad)
    # the two optimiser steps moved the adapter: a fit that updates nothing (no optimiser, zero or detached
    # gradients, a learning rate of 0) leaves every trainable tensor as it was
    params = dict(module.named_parameters())
    changed = [n for n, before in trainable.items() if not torch.equal(params[n].detach(), before)]
    assert changed, "no trainable parameter changed in two training steps"
    assert all(torch.isfinite(params[n]).all() for n in trainable)
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
    with pytest.raises(ConfigError, match="model.compact.head"):
        tiny_module(extra=["model.compact.head=kernel"])


def test_unknown_compact_model_keys_are_refused_naming_them():
    from lightning_modules.config import ConfigError
    from lightning_modules.stage1 import KRange, build_generator

    with pytest.raises(ConfigError, match=r"model.compact has unknown keys \['hed'\]"):
        build_generator({"kind": "compact", "compact": {"hed": "layered"}}, KRange(0.5, 2.0), 16)


def test_layered_head_generator_exports_and_loads_with_its_head(tmp_path):
    module, _ = tiny_module(extra=["model.compact.head=layered"])
    with torch.no_grad():
        for p in module.generator.net.unet.conv_out.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    module.generator.eval()
    export_generator(module, tmp_path)
    gen, _ = load_generator(tmp_path)
    assert gen.net.head == "layered"
    image = torch.rand(3, 16, 24)
    a = module.generator.generate_stack(image, [0.75, 1.5], num_steps=2).frames
    b = gen.generate_stack(image, [0.75, 1.5], num_steps=2).frames
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a[0, 0], image, atol=1e-3)


# ------------------------------------------------------------------------------------------- focus policy (issue 4)
SIZE = 64  # the training width of configs/stage1.yaml, where K is given


def _point_light(depth_m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A fronto-parallel plane at depth_m, black but for one white pixel at the centre: image [3,H,W], depth [1,H,W]."""
    image = torch.zeros(3, SIZE, SIZE)
    image[:, SIZE // 2, SIZE // 2] = 1.0
    return image, torch.full((1, SIZE, SIZE), float(depth_m))


def measured_disk_radius_px(target: torch.Tensor) -> float:
    """The spot's radius measured on a rendered point light [3,H,W] (sRGB): a uniform disk of radius r spreads the
    point's energy E evenly over pi r^2 pixels, so r = sqrt(E / (pi * plateau)), with E and the plateau (the peak)
    read in linear light. Also checks that the spot IS a disk: flat inside 0.7 r (mean >= 0.9 x peak; a Gaussian of
    the same r gives 0.79) and holding >= 97% of the energy within 1.25 r + 1.5 px (a Gaussian: 79%)."""
    import kornia

    lin = kornia.color.rgb_to_linear_rgb(target.clamp(0, 1))[0].double()
    peak, energy = float(lin.max()), float(lin.sum())
    assert energy == pytest.approx(1.0, abs=2e-3)  # the renderer conserves the point's energy
    r = math.sqrt(energy / (math.pi * peak))
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    dist = ((ys - SIZE // 2) ** 2 + (xs - SIZE // 2) ** 2).double().sqrt()
    assert float(lin[dist <= 0.7 * r].mean()) >= 0.9 * peak, "not a flat disk"
    assert float(lin[dist <= 1.25 * r + 1.5].sum()) >= 0.97 * energy, "energy outside the disk"
    return r


def test_synthetic_batch_with_fixed_focus_renders_the_disk_radius_of_the_formula():
    """data.synthetic.focus_m=100: a training batch (scenes -> RenderingCollate at fresh K) blurs a fronto-parallel
    plane at depth d into a disk of radius K (1/d - 1/100) px, measured on the rendered image. The scenes' own focus
    (the plane itself, their nearest subject) would leave them sharp: the null policy is checked the same way."""
    from physics.scenes import Scene

    depths = [0.5, 0.6, 0.75, 1.0, 1.5, 2.5, 4.0, 9.0]

    def plane_scene(seed: int, height: int, width: int, **_) -> Scene:
        image, depth = _point_light(depths[seed % len(depths)])
        return Scene(image=image, depth_m=depth, intrinsics=torch.eye(3), focus_m=float(depth[0, 0, 0]),
                     hdr_gain=torch.ones(1, height, width), labels=torch.zeros(1, height, width, dtype=torch.int64),
                     seed=seed)

    base = ["data.height=64", "data.width=64", "data.batch_size=8", "data.num_workers=0", "k.min=0.5", "k.max=8.0"]
    _, dm = tiny_module(extra=base)  # the config default: focus_m 100
    dm.setup()
    assert dm.render_in_loader
    split = dm.splits["train"]
    assert split.base % len(depths) == 0  # seed % 8 == index: the depth of each item is known
    # the real scenes of the split carry the configured focus, not their own
    assert float(split[0]["focus_m"]) == 100.0 and split.make_scene(split.base, 64, 64).focus_m < 10.0
    split.make_scene = plane_scene
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["focus_m"], torch.full((8,), 100.0))
    radii = []
    for i in range(8):
        d, K = depths[int(batch["index"][i])], float(batch["K_px_m"][i])
        radii.append(K * (1.0 / d - 1.0 / 100.0))
        assert measured_disk_radius_px(batch["target"][i]) == pytest.approx(radii[-1], abs=0.5), (d, K)
    assert min(radii) < 2.0 and max(radii) > 6.0, radii  # small and large disks were both checked

    _, dm = tiny_module(extra=base + ["data.synthetic.focus_m=null"])  # each scene's nearest subject: the plane
    dm.setup()
    dm.splits["train"].make_scene = plane_scene
    batch = next(iter(dm.train_dataloader()))
    assert torch.allclose(batch["focus_m"], torch.tensor([depths[int(i)] for i in batch["index"]]))
    assert float((batch["target"] - batch["image"]).abs().max()) < 1e-4  # in focus: sharp


def test_rgbd_manifest_focus_row_then_config_then_nearest_subject(tmp_path):
    """rgbd_manifest: a row's focus_m wins, else data.rgbd.focus_m, else the nearest subject; disk radii measured."""
    import numpy as np

    from bokeh.io import write_image

    rows = [{"depth_m": 0.8}, {"depth_m": 1.0, "focus_m": 0.5}, {"depth_m": 2.0}]
    lines = []
    for i, row in enumerate(rows):
        image, depth = _point_light(row["depth_m"])
        write_image(tmp_path / f"rgb{i}.png", image)
        np.save(tmp_path / f"depth{i}.npy", depth[0].numpy())
        entry = {"image": f"rgb{i}.png", "depth": f"depth{i}.npy"}
        if "focus_m" in row:
            entry["focus_m"] = row["focus_m"]
        lines.append(json.dumps(entry))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    base = ["data.kind=rgbd_manifest", f"data.manifest.train={tmp_path / 'train.jsonl'}", "data.height=64",
            "data.width=64", "data.batch_size=3", "data.num_workers=0", "k.min=0.5", "k.max=8.0",
            "calibration.enabled=false"]
    K = torch.tensor([6.857143, 4.0, 2.857143])
    for focus_cfg, focus_of in (("100.0", lambda d: 100.0), ("null", lambda d: d)):
        module, dm = tiny_module(extra=base + [f"data.rgbd.focus_m={focus_cfg}"])
        dm.setup()
        batch = next(iter(dm.train_dataloader()))
        target = module.targets_for(batch, K)
        for j in range(3):
            row = rows[int(batch["index"][j])]
            focus = row.get("focus_m", focus_of(row["depth_m"]))
            assert float(batch["focus_m"][j]) == pytest.approx(focus, rel=1e-6)
            expected = float(K[j]) * abs(1.0 / focus - 1.0 / row["depth_m"])
            if expected == 0:  # the plane is its own nearest subject: in focus, the point stays one sharp pixel
                assert float((target[j] - batch["image"][j]).abs().max()) < 1e-4
            else:
                assert measured_disk_radius_px(target[j]) == pytest.approx(expected, abs=0.5), (row, focus_cfg)


@pytest.mark.parametrize("value", ["0", "-2.5", "nan", ".inf"])
def test_a_bad_focus_option_is_refused_naming_the_key(value):
    from lightning_modules.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.synthetic\.focus_m must be null .* finite and > 0"):
        tiny_module(extra=[f"data.synthetic.focus_m={value}"])
    with pytest.raises(ConfigError, match=r"data\.rgbd\.focus_m"):
        tiny_module(extra=[f"data.rgbd.focus_m={value}"])


def test_bad_focus_in_code_and_in_a_manifest_row_is_refused(tmp_path):
    from lightning_modules.stage1_data import RGBDManifest, SyntheticSplit

    with pytest.raises(ValueError, match=r"data\.synthetic\.focus_m .* got nan"):
        SyntheticSplit("train", 2, 16, 16, 0, {}, float("nan"))
    with pytest.raises(ValueError, match=r"data\.synthetic\.focus_m .* got 'far'"):
        SyntheticSplit("train", 2, 16, 16, 0, {}, "far")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "depth": "a.npy"}) + "\n"
                                      + json.dumps({"image": "b.png", "depth": "b.npy", "focus_m": 0}) + "\n")
    with pytest.raises(ValueError, match=r"m\.jsonl:2: focus_m must be .* > 0.*got 0"):
        RGBDManifest(tmp_path / "m.jsonl", 16, 16)


def test_a_manifest_depth_of_another_size_or_without_valid_pixels_is_refused(tmp_path):
    from PIL import Image

    from lightning_modules.stage1_data import RGBDManifest

    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(tmp_path / "a.png")
    np.save(tmp_path / "small.npy", np.ones((6, 8), np.float32))
    np.save(tmp_path / "holes.npy", np.zeros((12, 16), np.float32))
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "depth": "small.npy"}) + "\n"
                                      + json.dumps({"image": "a.png", "depth": "holes.npy"}) + "\n")
    manifest = RGBDManifest(tmp_path / "m.jsonl", 16, 16)
    with pytest.raises(ValueError, match=r"small\.npy is 6x8 \(HxW\) but its image .*a\.png is 12x16"):
        manifest[0]
    with pytest.raises(ValueError, match=r"holes\.npy has no valid"):
        manifest[1]


def test_generator_metadata_records_the_training_focus(tmp_path):
    module, _ = tiny_module()
    export_generator(module, tmp_path / "fixed")
    meta = json.loads((tmp_path / "fixed" / "generator.json").read_text())
    assert meta["focus_m"] == 100.0 and meta["focus_policy"] == "fixed"
    module, _ = tiny_module(extra=["data.synthetic.focus_m=null"])
    export_generator(module, tmp_path / "nearest")
    _, meta = load_generator(tmp_path / "nearest")
    assert meta["focus_m"] is None and "nearest subject" in meta["focus_policy"]


def test_generator_metadata_records_the_scene_options_and_bad_ones_fail_at_build(tmp_path):
    from lightning_modules.stage1_data import SyntheticSplit

    module, _ = tiny_module(extra=["data.synthetic.scene_options={appearance_cues: 1.5}"])
    export_generator(module, tmp_path / "cued")
    _, meta = load_generator(tmp_path / "cued")
    assert meta["scene_options"] == {"appearance_cues": 1.5}  # compare_bokeh evaluates on the same kind of scene
    with pytest.raises(ValueError, match="appearance_cues"):
        SyntheticSplit("train", 2, 16, 16, 0, {"appearance_cues": -1.0})
    with pytest.raises(ValueError, match=r"scene_options .*hazee"):
        SyntheticSplit("train", 2, 16, 16, 0, {"hazee": 1.0})


def test_stage1_default_generates_stage2_default_stack():
    """configs/stage1.yaml's focus and eval strengths are Stage-2's default stack (configs/data/synthetic.yaml) at the
    generator's width (K scales with image width), inside its trained K range: make_stack's default output is what
    the main job trains on."""
    from lightning_modules.config import load_config

    s1 = load_config(["stage1.yaml"])
    s2 = load_config(["data/synthetic.yaml"]).data.synthetic
    scale = s1.data.width / s2.width
    assert s1.data.synthetic.focus_m == s2.focus_m
    assert list(s1.eval.K_px_m) == pytest.approx([k * scale for k in s2.K_px_m], rel=1e-5)
    assert all(s1.k.min <= k * scale <= s1.k.max for k in s2.K_px_m)


# ------------------------------------------------------------------------- defocus supervision of the layered head
def test_true_defocus_map_is_the_thin_lens_defocus_on_the_head_side_clamped_to_its_range():
    from lightning_modules.stage1 import true_defocus_inv_m

    depth = torch.tensor([0.4, 0.5, 2.0, 10.0, 200.0]).view(1, 1, 1, 5)
    front = true_defocus_inv_m(depth, torch.tensor([100.0]), -1.0, 2.4)  # focus 100 m, blur in front of it
    # 1/d - 1/100: 2.49 (clamped to the head's 2.4), 1.99, 0.49, 0.09, and 0 behind the focal plane
    assert front.flatten().tolist() == pytest.approx([2.4, 1.99, 0.49, 0.09, 0.0], abs=1e-6)
    back = true_defocus_inv_m(depth, torch.tensor([0.5]), 1.0, 2.5)  # nearest subject at 0.5 m, the rest behind it
    assert back.flatten().tolist() == pytest.approx([0.0, 0.0, 1.5, 1.9, 1.995], abs=1e-6)


@pytest.mark.parametrize("kind", ["l1", "l2", "log_l1"])
def test_defocus_weight_adds_the_maps_error_to_the_frames_loss(kind):
    torch.manual_seed(0)
    module, dm = tiny_module(extra=["model.compact.head=layered", "train.defocus_weight=0.5",
                                    f"train.defocus_loss={kind}"])
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(3)
    total = module.training_step(batch, 0)
    torch.manual_seed(3)  # the same K, null mask, t and noise, without the map's term
    module.defocus_weight = 0.0
    frames_only = module.training_step(batch, 0)
    torch.manual_seed(3)
    K = module.draw_k(batch)
    null = torch.rand(K.shape[0]) < module.p_null
    t = sample_t(K.shape[0], distribution=module.t_dist)
    out = module.generator.training_loss(batch["image"], module.targets_for(batch, K), K, null, t)
    truth = (1.0 / batch["depth_m"] - 1.0 / batch["focus_m"].view(-1, 1, 1, 1)).clamp(0, 2.5)  # focus 100 m: front
    error = (out["defocus_inv_m"] - truth).detach()
    if kind == "log_l1":  # |log(p + 0.01) - log(t + 0.01)|, the floor of configs/stage1.yaml
        error = (torch.log(out["defocus_inv_m"] + 0.01) - torch.log(truth + 0.01)).detach()
    expected = float(error.abs().mean() if kind != "l2" else error.pow(2).mean())
    assert expected > 1e-3
    assert float(total) == pytest.approx(float(frames_only) + 0.5 * expected, rel=1e-5)


def test_log_l1_defocus_error_is_relative():
    """log_l1 charges a map s times too large the same on a far wall (0.1 1/m) as on a near object (2 1/m), and a
    map s times too small the same as one s times too large; l1 charges the near object 20x more."""
    from lightning_modules.stage1 import defocus_map_error

    truth = torch.tensor([0.1, 2.0]).view(2, 1, 1, 1)
    tiny = 1e-9  # no floor: the pure log ratio
    per_pixel = [float(defocus_map_error(1.5 * truth[i:i + 1], truth[i:i + 1], "log_l1", tiny)) for i in range(2)]
    assert per_pixel == pytest.approx([math.log(1.5)] * 2, rel=1e-6)
    assert float(defocus_map_error(truth / 1.5, truth, "log_l1", tiny)) == pytest.approx(math.log(1.5), rel=1e-6)
    l1 = [float(defocus_map_error(1.5 * truth[i:i + 1], truth[i:i + 1], "l1")) for i in range(2)]
    assert l1 == pytest.approx([0.05, 1.0], rel=1e-6)
    # the floor keeps an in-focus zero finite: |log(0.5 + 0.01) - log(0 + 0.01)|
    assert float(defocus_map_error(torch.full((1, 1, 1, 1), 0.5), torch.zeros(1, 1, 1, 1), "log_l1", 0.01)) == \
        pytest.approx(math.log(51.0), rel=1e-6)


def test_image_weight_zero_trains_the_map_alone():
    torch.manual_seed(0)
    module, dm = tiny_module(extra=["model.compact.head=layered", "train.defocus_weight=1.0",
                                    "train.image_weight=0.0"])
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(3)
    total = module.training_step(batch, 0)
    torch.manual_seed(3)  # the same K, null mask and t: the map the step saw
    K = module.draw_k(batch)
    null = torch.rand(K.shape[0]) < module.p_null
    t = sample_t(K.shape[0], distribution=module.t_dist)
    out = module.generator.training_loss(batch["image"], module.targets_for(batch, K), K, null, t)
    truth = (1.0 / batch["depth_m"] - 1.0 / batch["focus_m"].view(-1, 1, 1, 1)).clamp(0, 2.5)
    map_l1 = float((out["defocus_inv_m"] - truth).abs().mean())
    assert float(out["loss"]) > 1e-4  # the frames' loss is there, and left out
    assert float(total) == pytest.approx(map_l1, rel=1e-5)


def test_image_weight_is_checked():
    from lightning_modules.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.image_weight=-0\.5: expected a number >= 0"):
        tiny_module(extra=["model.compact.head=layered", "train.image_weight=-0.5"])
    with pytest.raises(ConfigError, match=r"train\.image_weight=0 with train\.defocus_weight=0 leaves nothing"):
        tiny_module(extra=["model.compact.head=layered", "train.image_weight=0.0", "train.defocus_weight=0.0"])


def _map_error_after_training(defocus_weight: float, steps: int = 25) -> tuple[float, float]:
    """(error before, error after) of the map predicted from the sharp image alone (t = 1), L1 in 1/m against the
    true defocus, for ``steps`` Adam steps on one batch with the given ``train.defocus_weight``."""
    torch.manual_seed(0)
    module, dm = tiny_module(extra=["model.compact.head=layered", f"train.defocus_weight={defocus_weight}"])
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    from lightning_modules.stage1 import true_defocus_inv_m

    truth = true_defocus_inv_m(batch["depth_m"], batch["focus_m"], -1.0, 2.5)

    def map_error() -> float:
        with torch.no_grad():
            x_t, sigma = torch.zeros_like(batch["image"]), torch.ones(4)
            defocus = module.generator.net.predict(x_t, sigma, batch["image"], torch.ones(4))[1]
        return float((defocus - truth).abs().mean())

    before = map_error()
    for step in range(steps):
        torch.manual_seed(step)
        loss = module.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, map_error()


def test_defocus_supervision_moves_the_map_toward_the_true_defocus():
    before, supervised = _map_error_after_training(1.0)
    same_start, frames_only = _map_error_after_training(0.0)
    assert same_start == pytest.approx(before)
    assert supervised < 0.6 * before  # the map learns the scene's defocus ...
    assert supervised < 0.7 * frames_only  # ... far faster than from the frames' loss alone


def test_defocus_weight_is_refused_where_there_is_no_map_or_no_depth():
    from lightning_modules.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.defocus_weight > 0 needs .*head=layered"):
        tiny_module(extra=["model.compact.head=residual", "train.defocus_weight=0.1"])
    with pytest.raises(ConfigError, match=r"train\.defocus_weight=.*: expected a number >= 0"):
        tiny_module(extra=["model.compact.head=layered", "train.defocus_weight=-1.0"])
    with pytest.raises(ConfigError, match=r"train\.defocus_loss must be 'l1' .* 'l2' .* or 'log_l1'"):
        tiny_module(extra=["model.compact.head=layered", "train.defocus_loss=huber"])
    with pytest.raises(ConfigError, match=r"train\.defocus_log_floor_inv_m=0.0: expected a number > 0"):
        tiny_module(extra=["model.compact.head=layered", "train.defocus_log_floor_inv_m=0.0"])
    with pytest.raises(ConfigError, match=r"train\.defocus_weight > 0 needs depth"):
        tiny_module(extra=["model.compact.head=layered", "train.defocus_weight=0.1", "data.kind=pairs",
                           "data.manifest.train=x.jsonl", "calibration.enabled=false"])
    with pytest.raises(ConfigError, match=r"calibration section: calibration knots \[0\.1, 1\.0\] must be finite and lie in the "
                                          r"trained range \[0\.5, 2\]"):  # refused at build, before any fit
        tiny_module(extra=["calibration.enabled=true", "calibration.knots=[1.0, 0.1]"])
    with pytest.raises(ConfigError, match=r"calibration section: .*num_scenes >= 1"):
        tiny_module(extra=["calibration.enabled=true", "calibration.num_scenes=0"])
    with pytest.raises(ConfigError, match=r"calibration\.enabled needs data\.kind=synthetic"):
        tiny_module(extra=["data.kind=pairs", "data.manifest.train=x.jsonl", "train.defocus_weight=0",
                           "calibration.enabled=true"])


def test_a_fit_reports_its_steps_and_the_time_its_validations_took(tmp_path):
    from lightning_modules.stage1 import run

    cfg = load_config(["configs/stage1.yaml"], TINY + [
        "model.compact.head=layered", "train.defocus_weight=0.1", "trainer.max_epochs=2", "trainer.max_time=null",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "calibration.enabled=true",
        "calibration.num_scenes=3", "calibration.iterations=1", "calibration.min_scenes=1", "calibration.knots=[1.0, 2.0]"])
    result = run(cfg, lambda: tmp_path)
    assert result["steps"] == 4  # 2 epochs x 8 scenes / batch 4
    assert result["fit_validations"] == 2  # one per epoch, no sanity check
    assert result["train_steps_per_s"] is None  # no max_steps: 50 start-up steps are skipped, and it ran 4
    assert 0 < result["fit_validation_s"] < result["fit_s"]
    assert json.loads((tmp_path / "result.json").read_text())["fit_validations"] == 2
    assert result["test"]["defocus_mae"] > 0  # the layered head's sampled map is scored against the true defocus
    # the exported generator is K-calibrated on validation scenes and loads with its calibration
    meta = json.loads((tmp_path / "generator.json").read_text())
    assert meta["k_calibration"]["knots_px_m"] == [1.0, 2.0] == result["k_calibration"]["knots_px_m"]
    assert (tmp_path / "calibration" / "calibration.png").is_file()
    assert load_generator(tmp_path)[0].k_calibration.gains == tuple(meta["k_calibration"]["gains"])


def test_training_rate_times_steps_after_the_skipped_ones_without_validation(monkeypatch):
    """One step per second after a 5 s start-up (step 1 at t = 5 s), a 3 s validation after step 6: with 2 steps
    skipped the window opens at step 2 (t = 6 s) and the rate is 1 step/s (start-up and validation left out)."""
    from types import SimpleNamespace

    from lightning_modules import callbacks
    from lightning_modules.callbacks import TrainingRate

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock[0])
    trainer = SimpleNamespace(global_step=0, state=SimpleNamespace(fn="fit"))
    rate = TrainingRate(skip_steps=2)
    for step in range(1, 9):
        clock[0] += 5.0 if step == 1 else 1.0
        trainer.global_step = step
        rate.on_train_batch_end(trainer, None, None, None, step - 1)
        if step == 1:
            assert rate.steps_per_s is None  # still inside the skipped steps
        if step == 6:
            rate.on_validation_start(trainer, None)
            clock[0] += 3.0
            rate.on_validation_end(trainer, None)
    assert rate.steps_per_s == pytest.approx(1.0)  # 6 steps (2 -> 8) in 9 s of which 3 s validated
    with pytest.raises(ValueError, match="skip_steps must be >= 1"):
        TrainingRate(skip_steps=0)


def test_config_synthetic_splits_draw_the_datamodules_scenes_and_refuse_other_data():
    from lightning_modules.config import ConfigError
    from lightning_modules.stage1_data import config_synthetic_splits

    cfg = load_config(["configs/stage1.yaml"], TINY)
    splits = config_synthetic_splits(cfg, {"val": 2, "test": 3}, "a tool")
    assert {k: len(v) for k, v in splits.items()} == {"val": 2, "test": 3}
    _, datamodule = build(cfg)
    datamodule.setup()
    assert torch.equal(splits["test"][1]["image"], datamodule.splits["test"][1]["image"])
    with pytest.raises(ConfigError, match="a tool needs synthetic scenes"):
        config_synthetic_splits(load_config(["configs/stage1.yaml"], TINY + ["data.kind=pairs"]), {"test": 1}, "a tool")


def test_an_ema_fit_exports_and_checkpoints_the_average_and_keeps_the_raw_weights_beside_it(tmp_path):
    """train.ema_decay: the best checkpoint's weights and the exported generator are the average (what validation
    measured), the raw training weights ride along in the checkpoint, and the two differ after a few steps."""
    from safetensors.torch import load_file

    from lightning_modules.stage1 import run

    cfg = load_config(["configs/stage1.yaml"], TINY + [
        "model.compact.head=layered", "train.ema_decay=0.5", "trainer.max_epochs=3", "trainer.max_time=null",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "optim.lr=0.01"])
    result = run(cfg, lambda: tmp_path)
    best = torch.load(result["best_checkpoint"], weights_only=False)
    exported = load_file(str(tmp_path / "generator.safetensors"))
    raw = best["trainable_ema"]["raw"]
    assert set(raw) == set(best["state_dict"]) and best["trainable_ema"]["ema"]["optimization_step"] >= 2
    differ = 0
    for name, average in best["state_dict"].items():
        torch.testing.assert_close(exported[name.removeprefix("generator.net.")], average, atol=0, rtol=0)
        differ += int(not torch.equal(average, raw[name]))
    assert differ > len(raw) // 2  # most tensors moved in training, and the average lags behind them


@pytest.mark.parametrize("value", [0.0, 1.0, 1.5, -0.1, "high"])
def test_a_bad_ema_decay_is_refused_naming_the_key(value):
    from lightning_modules.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.ema_decay=.*: expected null \(no average\) or a decay in \(0, 1\)"):
        tiny_module(extra=[f"train.ema_decay={value}"])
