"""Stage-1 generation (bokeh.generation): K conditioning, Flux K adapter, compact backbone, sampler, guidance.

diffusers-test style: tiny components built from config under a fixed seed, 2 inference steps, 16-32 px.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from bokehdepth_guard import require_bokehdepth

require_bokehdepth()

from bokeh.generation import (AdapterMismatchError, CompactBokehGenerator, CompactBokehUNet,  # noqa: E402
                              FluxKontextBokehGenerator, GuidanceConfig, KEmbedding, KRange, KRangeError,
                              install_k_adapter, lab_color_transfer, load_adapter, save_adapter, working_size)
from bokeh.generation.flow import flow_matching_loss, sample_flow  # noqa: E402
from bokeh.generation.flux_adapter import tiny_flux_transformer, tiny_flux_vae  # noqa: E402
from bokeh.generation.guidance import (PhysicsGuidance, flux_conservation_loss,  # noqa: E402
                                       stack_consistency_loss)

TINY_UNET = dict(block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=8)


def flux_inputs(batch: int = 2, seq: int = 16, txt: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(seq, 3)
    ids[:, 1] = torch.arange(seq) // 4
    ids[:, 2] = torch.arange(seq) % 4
    return dict(hidden_states=torch.randn(batch, seq, 16, generator=g),
                encoder_hidden_states=torch.randn(batch, txt, 32, generator=g),
                pooled_projections=torch.randn(batch, 32, generator=g), timestep=torch.full((batch,), 0.5),
                img_ids=ids, txt_ids=torch.zeros(txt, 3), return_dict=False)


def perturb(module: torch.nn.Module, scale: float = 0.2, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# ------------------------------------------------------------------------------------------------ K conditioning
def test_k_embedding_uses_null_rows_only_where_masked():
    emb = KEmbedding(8, k_scale=4.0)
    K = torch.tensor([1.0, 2.0, 3.0])
    out = emb(K, torch.tensor([False, True, False]))
    assert torch.equal(out[1], emb.null.detach()) or torch.allclose(out[1], emb.null)
    plain = emb(K)
    assert torch.allclose(out[[0, 2]], plain[[0, 2]])
    assert not torch.allclose(plain[0], plain[2])  # K reaches the output


def test_k_range_clamps_with_warning_and_error_policy_refuses():
    rng = KRange(1.0, 4.0, "clamp")
    with pytest.warns(UserWarning, match=r"outside the trained range \[1, 4\]"):
        out = rng.apply(torch.tensor([0.5, 2.0, 9.0]))
    assert out.tolist() == [1.0, 2.0, 4.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rng.apply(torch.tensor([1.0, 4.0])).tolist() == [1.0, 4.0]
    with pytest.raises(KRangeError, match=r"\[9\.0\] outside the trained range"):
        KRange(1.0, 4.0, "error").apply(torch.tensor([2.0, 9.0]))
    for bad in ([-1.0], [float("nan")]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            rng.apply(torch.tensor(bad))
    with pytest.raises(ValueError, match="policy"):
        KRange(1.0, 4.0, "ignore")


# ---------------------------------------------------------------------------------------------------- Flux adapter
def test_flux_adapter_is_identity_at_init_bit_for_bit():
    transformer = tiny_flux_transformer()
    inputs = flux_inputs()
    with torch.no_grad():
        base = transformer(**inputs)[0]
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    assert len(adapter.processors) == 2  # one double-stream and one single-stream block, both adapted
    with torch.no_grad():
        out = transformer(**inputs, joint_attention_kwargs={"k_embedding": adapter.embed(torch.tensor([1.0, 3.0]))})[0]
    assert torch.equal(out, base)


def test_flux_adapter_only_adapter_trains_and_k_changes_the_output():
    transformer = tiny_flux_transformer()
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    trainable = {id(p) for p in transformer.parameters() if p.requires_grad}
    adapter_params = {id(p) for p in adapter.processors.parameters()}
    assert trainable == adapter_params and all(p.requires_grad for p in adapter.parameters())
    perturb(adapter)
    inputs = flux_inputs()
    out = transformer(**inputs, joint_attention_kwargs={"k_embedding": adapter.embed(torch.tensor([1.0, 1.0]))})[0]
    out.square().mean().backward()
    assert all(p.grad is None for n, p in transformer.named_parameters() if "processor" not in n)
    assert all(p.grad is not None for p in adapter.processors.parameters())
    with torch.no_grad():
        other = transformer(**inputs, joint_attention_kwargs={"k_embedding": adapter.embed(torch.tensor([4.0, 4.0]))})[0]
    assert (other - out.detach()).abs().max() > 1e-4


def test_flux_adapter_save_load_round_trip(tmp_path):
    transformer = tiny_flux_transformer()
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    perturb(adapter)
    path = save_adapter(adapter, tmp_path / "adapter.safetensors")
    from safetensors.torch import load_file

    saved = load_file(str(path))
    assert set(saved) == set(adapter.state_dict())  # only adapter weights are saved
    assert sum(v.numel() for v in saved.values()) == sum(p.numel() for p in adapter.parameters())
    fresh = tiny_flux_transformer()
    loaded = load_adapter(fresh, path)
    inputs = flux_inputs()
    K = torch.tensor([1.0, 3.0])
    with torch.no_grad():
        a = transformer(**inputs, joint_attention_kwargs={"k_embedding": adapter.embed(K)})[0]
        b = fresh(**inputs, joint_attention_kwargs={"k_embedding": loaded.embed(K)})[0]
    assert torch.equal(a, b)
    assert not any(p.requires_grad for n, p in fresh.named_parameters() if "processor" not in n)


def test_flux_adapter_mismatch_names_the_keys(tmp_path):
    path = save_adapter(install_k_adapter(tiny_flux_transformer(), rank=4, k_dim=24), tmp_path / "a.safetensors")
    with pytest.raises(AdapterMismatchError, match=r"transformer_blocks__1__attn__processor\.q_up\.weight"):
        load_adapter(tiny_flux_transformer(num_layers=2), path)
    wider = tiny_flux_transformer(num_attention_heads=3, axes_dims_rope=(4, 6, 6))
    with pytest.raises(AdapterMismatchError, match=r"shape mismatches: .*q_up\.weight \(checkpoint \(32, 4\) vs backbone \(48, 4\)\)"):
        load_adapter(wider, path)
    # nothing was installed on the refused backbone
    assert all(type(p).__name__ != "KAdapterAttnProcessor" for p in wider.attn_processors.values())
    bogus = tmp_path / "not_an_adapter.safetensors"
    bogus.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read adapter checkpoint"):
        load_adapter(tiny_flux_transformer(), bogus)


def test_flux_kontext_generator_two_steps_same_noise_and_aspect():
    transformer, vae = tiny_flux_transformer(), tiny_flux_vae()
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    gen = FluxKontextBokehGenerator(transformer, vae, adapter, KRange(0.0, 8.0), resolution=32)
    image = torch.rand(3, 24, 40)
    res = gen.generate_stack(image, [2.0, 2.0, 6.0], num_steps=2, cfg_scale=2.0,
                             guidance=GuidanceConfig(flux_strength=0.5, stack_strength=0.5))
    assert res.frames.shape == (1, 3, 3, 24, 40) and torch.isfinite(res.frames).all()
    assert res.work_size[0] % gen.size_multiple == 0 and res.work_size[1] % gen.size_multiple == 0
    assert torch.allclose(res.frames[0, 0], res.frames[0, 1], atol=1e-5)  # same K + same noise -> same frame


def test_flux_training_loss_reaches_only_the_adapter():
    transformer, vae = tiny_flux_transformer(), tiny_flux_vae()
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    gen = FluxKontextBokehGenerator(transformer, vae, adapter, KRange(0.0, 8.0), resolution=16)
    sharp, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    out = gen.training_loss(sharp, target, torch.tensor([1.0, 5.0]), torch.tensor([False, True]), torch.tensor([0.3, 0.7]))
    out["loss"].backward()
    grads = {n for n, p in gen.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and all(n.startswith("adapter.") or ".processor." in n for n in grads)
    assert all(p.grad is None for p in vae.parameters())


# --------------------------------------------------------------------------------------------------- compact model
def tiny_compact(seed: int = 0, **kw) -> CompactBokehGenerator:
    torch.manual_seed(seed)
    net = CompactBokehUNet(TINY_UNET, k_scale=4.0, **kw).eval()
    return CompactBokehGenerator(net, KRange(0.5, 4.0), resolution=32).eval()


def test_compact_generator_is_the_identity_at_init():
    gen = tiny_compact()
    image = torch.rand(3, 20, 30)
    res = gen.generate_stack(image, [1.0, 3.0], num_steps=2)
    assert torch.allclose(res.frames[0], image.expand(2, -1, -1, -1), atol=1e-6)


def test_stack_uses_the_same_initial_noise_for_every_frame():
    gen = tiny_compact()
    perturb(gen.net, 0.05)
    seen = []
    original = gen.predict_x0_and_defocus

    def spy(x_t, sigma, cond, K, null_mask, *options):
        seen.append(x_t.clone())
        return original(x_t, sigma, cond, K, null_mask, *options)

    gen.predict_x0_and_defocus = spy
    image = torch.rand(2, 3, 32, 32)
    res = gen.generate_stack(image, [0.5, 2.0, 4.0], num_steps=2, seed=3)
    first = seen[0].view(2, 3, 3, 32, 32)
    assert torch.equal(first[:, 0], first[:, 1]) and torch.equal(first[:, 0], first[:, 2])
    assert not torch.equal(first[0, 0], first[1, 0])  # images of a batch get their own noise
    assert len(seen) == 2 and seen[0].shape[0] == 6  # one batched call per step over all B*N frames
    assert not torch.equal(res.frames[0, 0], res.frames[0, 2])  # K matters once the network is not zero


def test_aspect_ratio_is_kept_and_k_follows_the_width():
    assert working_size(480, 640, 8, 64) == (48, 64)
    assert working_size(1024, 1536, 16, 512) == (336, 512)
    gen = tiny_compact()
    image = torch.rand(3, 45, 70)
    res = gen.generate_stack(image, [3.5], num_steps=1)
    h, w = res.work_size
    assert res.frames.shape[-2:] == (45, 70)
    assert abs(h / w - 45 / 70) < 0.1 and h % 2 == 0 and w % 2 == 0
    assert math.isclose(float(res.K_work_px_m[0]), 3.5 * w / 70, rel_tol=1e-6)


def test_generator_k_outside_range_is_clamped_with_warning_or_refused():
    gen = tiny_compact()
    image = torch.rand(3, 32, 32)
    with pytest.warns(UserWarning, match="outside the trained range"):
        res = gen.generate_stack(image, [10.0], num_steps=1)
    assert float(res.K_work_px_m[0]) == 4.0
    gen.k_range = KRange(0.5, 4.0, "error")
    with pytest.raises(KRangeError):
        gen.generate_stack(image, [10.0], num_steps=1)


@pytest.mark.parametrize("bad", [torch.rand(1, 16, 16), torch.rand(4, 16, 16), torch.full((3, 16, 16), float("nan"))])
def test_generator_rejects_non_rgb_or_nan_tensors(bad):
    with pytest.raises(ValueError, match="RGB|NaN"):
        tiny_compact().generate_stack(bad, [1.0], num_steps=1)


def test_lab_colour_transfer_matches_the_reference_statistics():
    import kornia

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 32, 32, generator=g)
    shifted = (ref * 0.6 + torch.tensor([0.3, 0.0, 0.1]).view(1, 3, 1, 1)).clamp(0, 1)
    out = lab_color_transfer(shifted, ref)
    lab_out, lab_ref = kornia.color.rgb_to_lab(out), kornia.color.rgb_to_lab(ref)
    assert (lab_out.mean((-2, -1)) - lab_ref.mean((-2, -1))).abs().max() < 3.0  # sRGB gamut clipping
    before = (kornia.color.rgb_to_lab(shifted).mean((-2, -1)) - lab_ref.mean((-2, -1))).abs().max()
    assert before > 5


# -------------------------------------------------------------------------------------------------- flow + guidance
def test_sampler_recovers_x0_with_a_perfect_predictor():
    x0 = torch.randn(2, 3, 8, 8)
    out = sample_flow(lambda x, s: x0, torch.randn(2, 3, 8, 8), num_steps=2)
    assert torch.allclose(out, x0, atol=1e-5)


def test_flow_matching_loss_equals_x0_mse():
    x0, noise, t = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4), torch.tensor([0.1, 0.4, 0.7, 1.0])
    guess = torch.zeros_like(x0)
    out = flow_matching_loss(lambda x_t, tt: guess, x0, noise, t)
    assert torch.allclose(out["loss"], (guess - x0).pow(2).mean(), atol=1e-6)
    tt = t.view(-1, 1, 1, 1)
    v_hat = ((1 - tt) * x0 + tt * noise - guess) / tt
    assert torch.allclose(out["v_mse"], (v_hat - (noise - x0)).pow(2).mean(), atol=1e-5)


def test_flux_guidance_step_restores_the_local_mean():
    import kornia

    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 3, 32, 32, generator=g)
    lin = kornia.color.rgb_to_linear_rgb(sharp)
    bokeh = kornia.color.linear_rgb_to_rgb(kornia.filters.box_blur(lin, (5, 5)))  # blur in linear light: flux kept
    pred = bokeh * 0.7  # a "bokeh" that lost light
    cfg = GuidanceConfig(flux_strength=1.0, min_sigma_px=3.0, max_step=1.0)
    K = torch.tensor([2.0])
    before = flux_conservation_loss(pred, sharp, K, cfg)
    after = flux_conservation_loss(PhysicsGuidance(cfg).step(pred, sharp, K, 1), sharp, K, cfg)
    assert after < 0.5 * before
    bounded = GuidanceConfig(flux_strength=1.0, min_sigma_px=3.0, max_step=0.01)
    stepped = PhysicsGuidance(bounded).step(pred, sharp, K, 1)
    assert (stepped - pred).abs().max() <= 0.01 + 1e-6  # trust region
    assert flux_conservation_loss(stepped, sharp, K, cfg) < before
    assert flux_conservation_loss(bokeh, sharp, K, cfg) < 0.1 * before


@pytest.mark.parametrize("estimator", ["physics", "proxy"])
def test_stack_consistency_prefers_blur_linear_in_k(estimator):
    import kornia

    g = torch.Generator().manual_seed(0)
    sharp = kornia.filters.gaussian_blur2d(torch.rand(1, 3, 48, 48, generator=g), (3, 3), (0.6, 0.6))
    K = torch.tensor([[1.0, 2.0, 3.0]])
    cfg = GuidanceConfig(stack_strength=1.0, stack_estimator=estimator)

    def stack(sigmas):
        return torch.stack([kornia.filters.gaussian_blur2d(sharp, (15, 15), (s, s)) for s in sigmas], dim=1)

    linear = stack_consistency_loss(stack([0.8, 1.6, 2.4]), sharp, K, cfg)
    broken = stack_consistency_loss(stack([2.4, 0.8, 1.6]), sharp, K, cfg)
    assert linear < 0.5 * broken


def test_physics_stack_guidance_pulls_an_off_line_frame_onto_radius_linear_in_k():
    """A stack whose middle frame is over-blurred (disk radii 1, 3, 3 px at K 1, 2, 3) is stepped by the
    physics-estimator guidance: the penalty falls tenfold and physics.dfd's estimate of every frame's radius lands
    within 0.15 px of the least-squares line through the origin, K * 16/14 = 1.14, 2.29, 3.43 px."""
    import kornia

    from physics.dfd import blur_bank, estimate_blur_radius

    g = torch.Generator().manual_seed(0)
    sharp = torch.nn.functional.interpolate(torch.rand(1, 3, 25, 25, generator=g), size=(48, 48), mode="bilinear")
    lin = kornia.color.rgb_to_linear_rgb(sharp)
    frames = kornia.color.linear_rgb_to_rgb(blur_bank(lin, [1.0, 3.0, 3.0])).permute(1, 0, 2, 3, 4)  # [1,3,3,H,W]
    K = torch.tensor([1.0, 2.0, 3.0])
    cfg = GuidanceConfig(stack_strength=0.5, stack_estimator="physics", estimator_max_inv_m=2.0)
    guide = PhysicsGuidance(cfg)

    def radii(stack):
        r = estimate_blur_radius(sharp, stack, max_radius_px=6.0, step_px=0.25)
        return r[0, :, 0, 8:-8, 8:-8].flatten(1).median(dim=1).values

    before_loss = stack_consistency_loss(frames, sharp, K[None], cfg)
    flat = frames[0]
    for _ in range(5):
        flat = guide.step(flat, sharp.expand(3, -1, -1, -1), K, 3)
    assert stack_consistency_loss(flat[None], sharp, K[None], cfg) < 0.1 * before_loss
    assert torch.allclose(radii(frames), torch.tensor([1.0, 3.0, 3.0]), atol=0.05)
    assert torch.allclose(radii(flat[None]), K * 16 / 14, atol=0.15), radii(flat[None])


def test_physics_stack_guidance_leaves_a_consistent_stack_almost_unchanged():
    """Frames blurred at radii exactly K * Delta (Delta = 0.8 px per px*m, a plane) are what the guidance pulls
    toward: a step moves pixels by 0.001 on average and none by more than a third of the 0.03 trust region (the
    candidate disks are 0.5 px apart, so radii between them are read approximately)."""
    import kornia

    from physics.dfd import blur_bank

    g = torch.Generator().manual_seed(1)
    sharp = torch.nn.functional.interpolate(torch.rand(1, 3, 25, 25, generator=g), size=(48, 48), mode="bilinear")
    K = torch.tensor([1.0, 2.0, 3.0])
    lin = kornia.color.rgb_to_linear_rgb(sharp)
    frames = kornia.color.linear_rgb_to_rgb(blur_bank(lin, (0.8 * K).tolist()))[:, 0]  # [3,3,H,W]
    stepped = PhysicsGuidance(GuidanceConfig(stack_strength=0.5)).step(frames, sharp.expand(3, -1, -1, -1), K, 3)
    change = (stepped - frames).abs()
    assert change.mean().item() < 0.001 and change.max().item() < 0.01


def test_guidance_config_refuses_unknown_estimator_and_negative_strength():
    with pytest.raises(ValueError, match="stack_estimator"):
        GuidanceConfig(stack_estimator="gradient")
    with pytest.raises(ValueError, match="stack_strength"):
        GuidanceConfig(stack_strength=-1.0)


def test_flux_generator_matches_flux_kontext_pipeline_at_init():
    """With the adapter at its zero init, our sampling equals diffusers' FluxKontextPipeline run without text
    encoders (same prompt embeddings, image, initial latents and schedule)."""
    from diffusers import FluxKontextPipeline

    transformer, vae = tiny_flux_transformer(), tiny_flux_vae()
    adapter = install_k_adapter(transformer, rank=4, k_dim=24)
    gen = FluxKontextBokehGenerator(transformer, vae, adapter, KRange(0.0, 8.0), resolution=None)
    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4 * 6, 16, generator=torch.Generator().manual_seed(1))  # packed latents [B, seq, 4C]
    ours = gen.generate_stack(image, [2.0], num_steps=2, noise=noise).frames[0, 0]
    pipe = FluxKontextPipeline(scheduler=gen.scheduler, vae=vae, text_encoder=None, tokenizer=None,
                               text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(image=image, prompt_embeds=gen.prompt_embeds, pooled_prompt_embeds=gen.pooled_prompt_embeds,
               height=16, width=24, num_inference_steps=2, latents=noise, output_type="pt",
               max_area=16 * 24, _auto_resize=False).images[0]
    assert ref.shape == ours.shape
    assert torch.allclose(ours, ref.clamp(0, 1), atol=1e-4), (ours - ref).abs().max()


def test_disk_blur_bank_is_the_renderers_disk_psf_per_sample():
    """blur_bank_kernel="disk": each sample's bank level is its image convolved with physics' disk of radius K*delta
    (checked against physics.aperture.disk_kernel); K = 0 (null rows) leaves the image unchanged."""
    import kornia
    import torch.nn.functional as F

    from bokeh.generation.compact import CompactBokehUNet
    from physics.aperture import disk_kernel

    unet = {"block_out_channels": (8, 16), "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 4, "cross_attention_dim": 8,
            "attention_head_dim": 4}
    net = CompactBokehUNet(unet, blur_bank_inv_m=[0.5], blur_bank_kernel="disk")
    sharp = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bank = net.blur_features(sharp, torch.tensor([6.0, 0.0]))  # radii 3 px and 0 px
    lin = kornia.color.rgb_to_linear_rgb(sharp)
    k = disk_kernel(3.0)
    expected = F.conv2d(F.pad(lin[:1].reshape(3, 1, 32, 32), (3,) * 4, mode="reflect"), k[None, None]).reshape(1, 3, 32, 32)
    torch.testing.assert_close(bank[:1], kornia.color.linear_rgb_to_rgb(expected.clamp(0, 1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(bank[1:], sharp[1:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="blur_bank_kernel"):
        CompactBokehUNet(unet, blur_bank_kernel="box")


# ------------------------------------------------------------------------------------- layered (physics) x0 head
def _smooth_texture(h: int, w: int, seed: int) -> torch.Tensor:
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4, w // 4, generator=g)
    return (0.1 + 0.8 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)).clamp(0, 1)


def test_layered_head_at_init_is_the_physics_render_of_a_uniform_defocus():
    """At init the layered head's x0 is physics' render of a plane whose defocus 1/depth - 1/focus is
    defocus_init_inv_m (front side, focus 100 m); null-K rows stay sharp."""
    from physics.render import render_bokeh

    torch.manual_seed(0)
    net = CompactBokehUNet(TINY_UNET, k_scale=8.0, head="layered", defocus_init_inv_m=0.5).eval()
    sharp = torch.cat([_smooth_texture(32, 32, s) for s in (0, 1)])
    K = torch.tensor([3.0, 7.0])
    with torch.no_grad():
        x0, delta = net.predict(torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.7]), sharp, K)
        null_x0, _ = net.predict(torch.randn(2, 3, 32, 32), torch.tensor([0.7, 0.7]), sharp, K,
                                 torch.tensor([True, True]))
    assert torch.allclose(delta, torch.full_like(delta, 0.5), atol=1e-6)
    depth = torch.full((2, 1, 32, 32), 1.0 / (1.0 / 100.0 + 0.5))  # K (1/100 - 1/depth) = -0.5 K
    expected = render_bokeh(sharp, depth, K, 100.0)
    torch.testing.assert_close(net.to_image(x0, sharp), expected, atol=1e-5, rtol=0)
    assert (expected - sharp).abs().mean() > 0.01  # a real blur, not the identity
    torch.testing.assert_close(net.to_image(null_x0, sharp), sharp, atol=1e-6, rtol=0)


@pytest.mark.parametrize("true_delta", [0.15, 1.5])
def test_layered_head_gradient_moves_the_defocus_toward_the_rendered_blur(true_delta):
    """Trained only on rendered frames (no depth), the head's defocus logit gets a gradient whose descent direction
    moves delta from its 0.5 init toward the plane's true defocus 1/depth - 1/focus (smaller or larger)."""
    from physics.render import render_bokeh

    torch.manual_seed(0)
    net = CompactBokehUNet(TINY_UNET, k_scale=8.0, head="layered", defocus_init_inv_m=0.5)
    sharp = _smooth_texture(32, 32, 3)
    K = torch.tensor([6.0])
    target = render_bokeh(sharp, torch.full((1, 1, 32, 32), 1.0 / (0.01 + true_delta)), K, 100.0)
    x0 = net(torch.randn(1, 3, 32, 32), torch.tensor([0.5]), sharp, K)
    ((net.to_image(x0, sharp) - target) ** 2).mean().backward()
    descent = -float(net.unet.conv_out.bias.grad[3])  # the defocus logit's bias (space_to_depth 1)
    assert descent * (true_delta - 0.5) > 0, descent


def test_layered_head_options_are_checked():
    with pytest.raises(ValueError, match="head"):
        CompactBokehUNet(TINY_UNET, head="kernel")
    with pytest.raises(ValueError, match="defocus_side"):
        CompactBokehUNet(TINY_UNET, head="layered", defocus_side="left")
    with pytest.raises(ValueError, match="defocus_init_inv_m"):
        CompactBokehUNet(TINY_UNET, head="layered", defocus_init_inv_m=3.0, defocus_max_inv_m=2.5)


def test_layered_head_stack_is_rendered_by_physics_at_the_input_size():
    """A 48x72 image through a 32-px generator: the layered head's defocus map (1/m) is re-rendered at the input
    size with K for the input width, so at init each frame is physics' render of the full-size image of a plane at
    1/depth - 1/100 = 0.5 1/m (crisp disks, not an upsampled 32-px residual)."""
    from physics.render import render_bokeh

    gen = tiny_compact(head="layered", defocus_init_inv_m=0.5)
    image = _smooth_texture(48, 72, 5)[0]
    res = gen.generate_stack(image, [4.0, 9.0], num_steps=2)
    assert res.work_size != (48, 72) and res.info["rendered_at_input_size"]
    assert res.info["defocus_inv_m"].shape == (1, 2, 1, *res.work_size)
    depth = torch.full((2, 1, 48, 72), 1.0 / (0.01 + 0.5))
    expected = render_bokeh(image.expand(2, -1, -1, -1), depth, res.K_work_px_m * 72 / res.work_size[1], 100.0)
    torch.testing.assert_close(res.frames[0], expected, atol=1e-4, rtol=0)
    upsampled = gen.generate_stack(image, [4.0, 9.0], num_steps=2, render_full_resolution=False).frames[0]
    assert (upsampled - expected).abs().mean() > 1e-3  # the old path differs: the re-render did something


def test_k_free_layered_head_predicts_one_defocus_map_for_every_k_and_renders_it_with_physics():
    """defocus_k_free + no residual: from the same state the network returns the same defocus map for any K, and
    each frame is exactly physics' render of the depth 1 / (1/100 + delta) at that K, focus 100 m (front side):
    radii r_i = K_i * delta, the sweep proposition, by construction."""
    from physics.render import render_bokeh

    torch.manual_seed(0)
    net = CompactBokehUNet(TINY_UNET, k_scale=8.0, head="layered", defocus_residual=False,
                           defocus_k_free=True).eval()
    assert net.unet.conv_out.out_channels == 1
    perturb(net, 0.2)
    sharp = _smooth_texture(32, 32, 2).expand(2, -1, -1, -1)
    x_t = torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1)
    K = torch.tensor([2.0, 7.0])
    with torch.no_grad():
        x0, delta = net.predict(x_t, torch.tensor([0.6, 0.6]), sharp, K)
    assert torch.equal(delta[0], delta[1]) and float(delta.std()) > 1e-3  # one non-uniform map for both K
    expected = render_bokeh(sharp, 1.0 / (0.01 + delta), K, 100.0)
    torch.testing.assert_close(net.to_image(x0, sharp), expected, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    k_aware = CompactBokehUNet(TINY_UNET, k_scale=8.0, head="layered", defocus_residual=False).eval()
    perturb(k_aware, 0.2)
    with torch.no_grad():
        _, delta_k = k_aware.predict(x_t, torch.tensor([0.6, 0.6]), sharp, K)
    assert not torch.allclose(delta_k[0], delta_k[1], atol=1e-4)  # without the option the map follows K
    with pytest.raises(ValueError, match="blur_bank_inv_m"):
        CompactBokehUNet(TINY_UNET, head="layered", defocus_k_free=True, blur_bank_inv_m=[0.5])


# ------------------------------------------------------------------------------------------------- flip averaging
@pytest.mark.parametrize("head", ["layered", "residual"])
def test_flip_averaged_prediction_is_exactly_mirror_equivariant(head):
    """Mirroring the input mirrors a flip-averaged prediction (x0 and the defocus map) exactly; a perturbed network
    alone does not, so the property is the averaging's, and the average lies between the two readings."""
    torch.manual_seed(0)
    net = CompactBokehUNet(TINY_UNET, k_scale=8.0, head=head, space_to_depth=2).eval()
    perturb(net, 0.2)
    sharp = torch.rand(2, 3, 32, 32)
    x_t = torch.randn(2, 3, 32, 32)
    sigma, K = torch.tensor([0.3, 0.8]), torch.tensor([2.0, 5.0])
    with torch.no_grad():
        x0, delta = net.predict(x_t, sigma, sharp, K, flip_average=True)
        x0_m, delta_m = net.predict(x_t.flip(-1), sigma, sharp.flip(-1), K, flip_average=True)
        plain, plain_delta = net.predict(x_t, sigma, sharp, K)
        plain_m, plain_delta_m = net.predict(x_t.flip(-1), sigma, sharp.flip(-1), K)
    torch.testing.assert_close(x0_m, x0.flip(-1), atol=1e-5, rtol=0)
    assert (plain_m - plain.flip(-1)).abs().max() > 1e-3
    if head == "layered":
        torch.testing.assert_close(delta_m, delta.flip(-1), atol=1e-6, rtol=0)
        torch.testing.assert_close(delta, 0.5 * (plain_delta + plain_delta_m.flip(-1)), atol=1e-6, rtol=0)
    else:
        assert delta is None
        torch.testing.assert_close(x0, 0.5 * (plain + plain_m.flip(-1)), atol=1e-5, rtol=0)


def test_flip_average_is_a_sampling_default_of_the_compact_generator_and_refused_elsewhere():
    gen = tiny_compact(head="layered")
    perturb(gen.net, 0.2)
    image = torch.rand(1, 3, 32, 32)
    plain = gen.generate_stack(image, [2.0], num_steps=2)
    gen.use_flip_average()
    averaged = gen.generate_stack(image, [2.0], num_steps=2)
    assert averaged.info["flip_average"] and not plain.info["flip_average"]
    assert torch.equal(gen.generate_stack(image, [2.0], num_steps=2, flip_average=False).frames, plain.frames)
    mirrored = gen.generate_stack(image.flip(-1), [2.0], num_steps=2, noise=torch.zeros(1, 3, 32, 32))
    still = gen.generate_stack(image, [2.0], num_steps=2, noise=torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(mirrored.frames, still.frames.flip(-1), atol=1e-5, rtol=0)
    assert (averaged.frames - plain.frames).abs().max() > 1e-4
    transformer, vae = tiny_flux_transformer(), tiny_flux_vae()
    flux = FluxKontextBokehGenerator(transformer, vae, install_k_adapter(transformer, rank=4, k_dim=24),
                                     KRange(0.0, 8.0), resolution=16)
    with pytest.raises(ValueError, match="flip averaging is implemented for the compact generator"):
        flux.use_flip_average()
    with pytest.raises(ValueError, match="flip averaging is implemented for the compact generator"):
        flux.generate_stack(torch.rand(3, 16, 16), [1.0], num_steps=1, flip_average=True)
