"""BokehDepthModel on Depth Anything V2 and DPT: plug-and-play identity, shared encoder, placements, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bokeh.depth import BokehDepthModel, build_depth_model


FAMILIES = {"depth_anything_v2": (42, 56), "dpt": (64, 96)}  # (H, W): multiples of 14 (DA) and 32 px (DPT)
K3 = torch.tensor([[10.0, 20.0, 30.0], [5.0, 15.0, 25.0]])


def _inputs(family: str, n: int = 3, seed: int = 0):
    h, w = FAMILIES[family]
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(2, 3, h, w, generator=g)
    stack = torch.rand(2, n, 3, h, w, generator=g)
    return image, stack, K3[:, :n].clone()


def _pair(family: str, placement: str = "posthoc", **extra) -> tuple[BokehDepthModel, BokehDepthModel]:
    """(model with DSFA, base model with the same weights), eval mode, with a head whose output varies per pixel."""
    torch.manual_seed(0)
    cfg = {"family": family, "dsfa": {"placement": placement}}
    cfg.update(extra)
    model = build_depth_model(cfg).eval()
    _sharpen_head(model)
    base = build_depth_model({"family": family, "dsfa": {"enabled": False}}).eval()
    missing, unexpected = base.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("dsfa.") for k in unexpected)
    return model, base


def _sharpen_head(model: BokehDepthModel) -> None:
    """transformers' init (std 0.02) makes random decoders output a near-constant sigmoid(~0) * max_depth; PyTorch's
    default (Kaiming-uniform) conv init, plus a wider last layer, gives per-pixel varying depth to compare."""
    torch.manual_seed(1)
    for module in model.backbone.decoder_modules():
        convs = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
        for m in convs:
            m.reset_parameters()
    with torch.no_grad():
        convs[-1].weight.mul_(20.0)


def _open_dsfa(model: BokehDepthModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.dsfa.named_parameters():
            if name.endswith("gamma") or ".film." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("placement", ["posthoc", "inside"])
def test_identity_at_init_equals_base_model(family: str, placement: str) -> None:
    model, base = _pair(family, placement)
    image, stack, K = _inputs(family)
    with torch.no_grad():
        out = model(image, stack, K)
        ref = base(image)
        assert out.shape == (2, 1, *FAMILIES[family])
        assert float(ref.std()) > 1e-2  # a non-degenerate output, so the comparison means something
        assert torch.equal(out, ref)
        for a, b in zip(model.tap_features(image, stack, K), base.tap_features(image)):
            assert torch.equal(a, b)
        # and the base model is the transformers model itself (transformers' plain-ViT DPT assumes square inputs)
        square = image[..., : image.shape[-2]]
        hf_out = base.backbone.hf(pixel_values=base.normalise(square)).predicted_depth
        if family == "dpt":
            hf_out = hf_out * base.backbone.max_depth_m
        torch.testing.assert_close(base(square)[:, 0], hf_out.clamp_min(base.min_depth_m), rtol=0, atol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dsfa_changes_output_once_open(family: str) -> None:
    model, base = _pair(family)
    _open_dsfa(model)
    image, stack, K = _inputs(family)
    with torch.no_grad():
        out = model(image, stack, K)
        assert (out - base(image)).abs().max() > 1e-3
        assert (out - model(image, stack.flip(1), K)).abs().max() > 1e-5  # frames carry their own K


@pytest.mark.parametrize("placement", ["posthoc", "inside"])
def test_stack_no_grad_gives_the_same_forward(placement: str) -> None:
    joint, _ = _pair("depth_anything_v2", placement)
    _open_dsfa(joint)
    separate = build_depth_model({"family": "depth_anything_v2", "stack_no_grad": True,
                                  "dsfa": {"placement": placement}}).eval()
    separate.load_state_dict(joint.state_dict())
    image, stack, K = _inputs("depth_anything_v2")
    with torch.no_grad():
        torch.testing.assert_close(joint(image, stack, K), separate(image, stack, K), atol=1e-5, rtol=1e-5)


def test_stack_no_grad_blocks_encoder_gradients_from_the_stack() -> None:
    model = build_depth_model({"family": "depth_anything_v2", "stack_no_grad": True, "dsfa": {"taps": [-1]}})
    image, stack, K = _inputs("depth_anything_v2", n=1)
    seen = []
    model.dsfa["3"].register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    model(image, stack, K).mean().backward()
    assert not seen[0].requires_grad
    assert model.dsfa["3"].focus_ls1.gamma.grad is not None


def test_inside_refined_tokens_flow_into_later_blocks_posthoc_do_not() -> None:
    image, stack, K = _inputs("depth_anything_v2")
    taps = {}
    for placement in ("posthoc", "inside"):
        model, base = _pair("depth_anything_v2", placement, dsfa={"placement": placement, "taps": [-2]})
        _open_dsfa(model)
        with torch.no_grad():
            taps[placement] = (model.tap_features(image, stack, K), base.tap_features(image))
    post, post_base = taps["posthoc"]
    inside, inside_base = taps["inside"]
    assert not torch.equal(post[2], post_base[2]) and torch.equal(post[3], post_base[3])
    assert not torch.equal(inside[2], inside_base[2]) and not torch.equal(inside[3], inside_base[3])
    assert torch.equal(inside[1], inside_base[1])  # blocks before the tap are untouched


def test_stack_frames_go_through_the_same_encoder() -> None:
    model, base = _pair("depth_anything_v2")
    image, stack, K = _inputs("depth_anything_v2", n=2)
    seen = []
    model.dsfa["3"].register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    with torch.no_grad():
        model(image, stack, K)
        frame1 = base.tap_features(stack[:, 1])[3]
    torch.testing.assert_close(seen[0][:, 1], frame1, atol=1e-5, rtol=1e-5)
    n_base = sum(p.numel() for p in base.parameters())
    assert sum(p.numel() for p in model.parameters()) == n_base + sum(p.numel() for p in model.dsfa.parameters())


@pytest.mark.parametrize("placement", ["posthoc", "inside"])
def test_gradient_reaches_dsfa_and_one_step_changes_the_model(placement: str) -> None:
    model, base = _pair("dpt", placement)
    model.train()
    image, stack, K = _inputs("dpt")
    target = torch.full((2, 1, *FAMILIES["dpt"]), 3.0)
    F.mse_loss(model(image, stack, K), target).backward()
    gammas = [p.grad for n, p in model.dsfa.named_parameters() if n.endswith("gamma")]
    assert all(g is not None for g in gammas) and sum(float(g.abs().sum()) for g in gammas) > 0
    torch.optim.Adam(model.dsfa.parameters(), lr=1e-2).step()
    model.eval()
    with torch.no_grad():
        assert (model(image, stack, K) - base(image)).abs().max() > 1e-4


def test_stack_sizes_work() -> None:
    model, _ = _pair("depth_anything_v2")
    _open_dsfa(model)
    for n in (0, 1, 3):
        image, stack, K = _inputs("depth_anything_v2", n=n)
        with torch.no_grad():
            out = model(image, stack, K)
        assert out.shape == (2, 1, 42, 56) and bool(torch.isfinite(out).all()) and float(out.min()) > 0
        if n == 0:
            with torch.no_grad():
                assert torch.equal(out, model(image, None, None))


def test_inside_placement_refuses_gradient_checkpointing() -> None:
    model = build_depth_model({"dsfa": {"placement": "inside"}})
    hf = model.backbone.hf
    (getattr(hf, "activation_checkpointing_enable", None) or hf.gradient_checkpointing_enable)()
    image, stack, K = _inputs("depth_anything_v2", n=1)
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        model(image, stack, K)


def test_mismatched_frame_size_is_resized_with_a_warning() -> None:
    model, _ = _pair("depth_anything_v2")
    _open_dsfa(model)
    image, stack, K = _inputs("depth_anything_v2", n=2)
    small = F.interpolate(stack.flatten(0, 1), size=(40, 52), mode="bilinear", align_corners=False).view(2, 2, 3, 40, 52)
    with pytest.warns(UserWarning, match="resized"):
        out = model(image, small, K)
    resized = F.interpolate(small.flatten(0, 1), size=(42, 56), mode="bilinear", align_corners=False,
                            antialias=True).view(2, 2, 3, 42, 56)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once
        model(image, small, K)
        torch.testing.assert_close(out, model(image, resized, K))


def test_non_patch_multiple_input_returns_input_size() -> None:
    model, _ = _pair("depth_anything_v2")
    image = torch.rand(1, 3, 45, 60)
    with pytest.warns(UserWarning, match="is not a multiple of 14 px"):
        out = model(image, torch.rand(1, 1, 3, 45, 60), torch.tensor([[12.0]]))
    assert out.shape == (1, 1, 45, 60)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda i, s, k: (i, s, k[:, :2]), r"K_px_m \(2, 2\) does not match stack \(2, 3, 3, 42, 56\)"),
        (lambda i, s, k: (i, s[:, :2], k), r"K_px_m \(2, 3\) does not match stack \(2, 2, 3, 42, 56\)"),
        (lambda i, s, k: (i, s, k.clone().fill_(float("nan"))), "finite"),
        (lambda i, s, k: (i, s, -k), ">= 0"),
        (lambda i, s, k: (i, s, None), "without K_px_m"),
        (lambda i, s, k: (i, None, k), "without a stack"),
        (lambda i, s, k: (i[:, :1], s, k), r"image must be \[B,3,H,W\]"),
        (lambda i, s, k: (i, s[:1], k), "stack must be"),
    ],
)
def test_bad_input_names_the_shapes(mutate, match: str) -> None:
    model, _ = _pair("depth_anything_v2")
    with pytest.raises(ValueError, match=match):
        model(*mutate(*_inputs("depth_anything_v2")))


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="dsfa.tapz"):
        build_depth_model({"dsfa": {"tapz": [1]}})
    with pytest.raises(ValueError, match="'famly'"):
        build_depth_model({"famly": "dpt"})
    with pytest.raises(ValueError, match="unknown model family"):
        build_depth_model({"family": "unidepth"})
    with pytest.raises(ValueError, match="placement"):
        build_depth_model({"dsfa": {"placement": "middle"}})
    with pytest.raises(ValueError, match="dsfa.taps entry 7"):
        build_depth_model({"dsfa": {"taps": [7]}})
    with pytest.raises(ValueError, match="'dsfa.k_scale' must be int or float"):
        build_depth_model({"dsfa": {"k_scale": "thirty"}})
    with pytest.raises(ValueError, match="'stack_no_grad' must be bool"):
        build_depth_model({"stack_no_grad": "yes"})
    with pytest.raises(ValueError, match="'family' must not be null"):
        build_depth_model({"family": None})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['hiden_size'\] in arch.backbone"):
        build_depth_model({"arch": {"backbone": {"hiden_size": 32}}})
    with pytest.raises(ValueError, match="fusion_hiden"):
        build_depth_model({"family": "dpt", "arch": {"decoder": {"fusion_hiden": 32}}})
    arch = {"backbone": {"num_hidden_layers": 3, "out_indices": [0, 1, 2, 3]}}  # stage 0 = the patch embedding
    small = build_depth_model({"arch": arch, "dsfa": {"enabled": False}})
    assert len(small.backbone.blocks) == 3 and small.backbone.tap_blocks == [-1, 0, 1, 2]
    with pytest.raises(ValueError, match="after a ViT block"):
        build_depth_model({"arch": arch, "dsfa": {"placement": "inside", "taps": [0]}})
    with pytest.raises(FileNotFoundError, match="/no/such/checkpoint"):
        build_depth_model({"pretrained_path": "/no/such/checkpoint"})


def test_pretrained_directory_round_trip(tmp_path) -> None:
    model, _ = _pair("depth_anything_v2")
    model.backbone.hf.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}')
    loaded = build_depth_model(OmegaConf.create({"pretrained_path": str(tmp_path / "ckpt"), "max_depth_m": 20.0})).eval()
    assert loaded.image_std.flatten().tolist() == [0.25, 0.25, 0.25]
    image, stack, K = _inputs("depth_anything_v2")
    with torch.no_grad():
        expected = model.backbone.decode(model.backbone.encode((image - 0.5) / 0.25), 3, 4).clamp_min(1e-3)
        torch.testing.assert_close(loaded(image, stack, K), expected, rtol=0, atol=0)


def test_param_groups_partition_the_parameters() -> None:
    for family in FAMILIES:
        model = build_depth_model({"family": family})
        groups = model.param_groups()
        assert set(groups) == {"dsfa", "encoder", "decoder"}
        ids = [id(p) for ps in groups.values() for p in ps]
        assert len(ids) == len(set(ids)) == len(list(model.parameters()))
        assert all(len(ps) > 0 for ps in groups.values())
    base = build_depth_model({"dsfa": {"enabled": False}})
    assert base.param_groups()["dsfa"] == [] and not base.dsfa_enabled


def test_relative_head_and_max_depth() -> None:
    rel = build_depth_model({"head": "relative"}).eval()
    assert not rel.is_metric
    metric = build_depth_model({"max_depth_m": 7.5}).eval()
    with torch.no_grad():
        out = metric(torch.rand(1, 3, 42, 56))
    assert metric.is_metric and float(out.max()) <= 7.5 and float(out.min()) > 0


def test_deepcopy_keeps_inside_refinement() -> None:
    import copy

    model, base = _pair("depth_anything_v2", "inside")
    _open_dsfa(model)
    clone = copy.deepcopy(model)
    image, stack, K = _inputs("depth_anything_v2", n=2)
    with torch.no_grad():
        out = clone(image, stack, K)
        assert torch.equal(out, model(image, stack, K))
        assert (out - base(image)).abs().max() > 1e-3


def test_bench_stage2_runs_and_reports_consistent_numbers(tmp_path) -> None:
    import json

    from _tools import load_tool

    bench = load_tool("bench_stage2")
    out = tmp_path / "bench.json"
    results = bench.main(["--sizes", "tiny", "--frames", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
                          "--defocus-cue", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    run = results["runs"][0]
    model = build_depth_model({"dsfa": {"defocus_cue": True}})
    assert run["params"]["dsfa"] == sum(p.numel() for p in model.dsfa.parameters())
    assert run["params"]["encoder"] + run["params"]["decoder"] == sum(p.numel() for p in model.backbone.parameters())
    f = run["frames"]["1"]
    assert f["flops_base"] < f["flops_stack"] < f["flops_dsfa"]
    assert f["dsfa_flops_overhead"] == pytest.approx(f["flops_dsfa"] / f["flops_stack"] - 1)


def test_dsfa_stats_names_every_block() -> None:
    model = build_depth_model({})
    stats = model.dsfa_stats()
    assert {k.split("/")[0] for k in stats} == {"tap2", "tap3"} and stats["tap3/gamma_focus1"] == 0.0
    assert build_depth_model({"dsfa": {"enabled": False}}).dsfa_stats() == {}


@pytest.mark.parametrize("placement", ["posthoc", "inside"])
def test_defocus_cue_keeps_identity_at_init_and_trains(placement: str) -> None:
    """The pixel defocus cue is plug-and-play too (zero projection at init), and one step puts it to use."""
    model, base = _pair("depth_anything_v2", placement, dsfa={"placement": placement, "defocus_cue": True})
    image, stack, K = _inputs("depth_anything_v2")
    with torch.no_grad():
        assert torch.equal(model(image, stack, K), base(image))
    model.train()
    target = torch.full((2, 1, *FAMILIES["depth_anything_v2"]), 3.0)
    F.mse_loss(model(image, stack, K), target).backward()
    proj_grads = [block.cue_proj.weight.grad for block in model.dsfa.values()]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in proj_grads)
    assert not list(model.dsfa_cue.parameters())  # a fixed measurement: only the blocks' projections learn
