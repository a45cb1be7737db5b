"""bokeh.evaluation (the library under tools/eval.py): rows with a random Stage-1 generator, skip reasons, the base
row against the metric by hand, resizing samples. Tiny random-weight models built from a config (no downloads)."""

from __future__ import annotations

import math

import pytest
import torch

TINY_MODEL = {
    "family": "depth_anything_v2", "size": "tiny", "max_depth_m": 20.0,
    "arch": {"backbone": {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                          "out_indices": [1, 2, 3, 4]},
             "decoder": {"neck_hidden_sizes": [8, 8, 16, 16], "fusion_hidden_size": 8, "head_hidden_size": 8,
                         "initializer_range": 0.1}},
    "dsfa": {"enabled": True, "taps": [-2, -1], "k_scale": 30.0},
}
SYNTHETIC = ["data.synthetic.num_test=2", "data.synthetic.height=28", "data.synthetic.width=28",
             "data.synthetic.K_px_m=[2.0,5.0]"]


def _row(result, start: str) -> dict:
    return next(r for r in result["rows"] if r["label"].startswith(start))


def _module(use_stack: bool):
    from lightning_modules.stage2 import Stage2Module

    return Stage2Module({"model": TINY_MODEL, "use_stack": use_stack}).eval()


def _split():
    from lightning_modules.config import load_config
    from lightning_modules.data import build_datamodule

    dm = build_datamodule(load_config(["data/synthetic.yaml"], SYNTHETIC).data)
    dm.setup("test")
    return dm.datasets["test"]


def test_base_row_is_the_models_depth_through_the_metric():
    from bokeh.evaluation import ModelSpec, evaluate_variants

    split, base = _split(), _module(False)
    lo, hi = 1e-3, 100.0
    result = evaluate_variants(split, [ModelSpec("base", base, False)], dataset_stack="physics", min_depth_m=lo,
                               max_depth_m=hi, dfd=False, progress=False)
    per_image = []
    for s in (split[i] for i in range(2)):
        with torch.no_grad():
            pred = base(s["image"][None])[0].double().clamp(lo, hi)
        gt, valid = s["depth_m"].double(), s["valid"] & (s["depth_m"] > lo) & (s["depth_m"] < hi)
        per_image.append(float(((pred - gt).abs() / gt)[valid].mean()))
    assert _row(result, "base")["metrics"]["abs_rel"] == pytest.approx(sum(per_image) / 2, rel=1e-6)
    assert "no BokehDepth model" in _row(result, "BokehDepth")["skipped"]


def test_stage1_rows_with_a_random_generator(stage2_stack_calls):
    """A random-weight Stage-1 generator: its rows run, and the BokehDepth model and the closed-form baseline are
    given the K the generator actually used (clamped to its trained range, converted back to the image width), not
    the K asked for. (The rows themselves do not list K: the K is checked where it is consumed.)"""
    from omegaconf import OmegaConf

    from bokeh.evaluation import ModelSpec, evaluate_variants
    from bokeh.generation import KRange
    from lightning_modules.config import load_config
    from lightning_modules.stage1 import build_generator
    from physics.dfd import depth_from_stack

    gen_cfg = OmegaConf.to_container(load_config(["stage1.yaml"]).model, resolve=True)
    # trained range [1, 4] px*m at the 32 px working width: the sample's K [2, 5] at 28 px asks for [2.29, 5.71]
    # there, so the 5 is clamped to 4, i.e. 4 * 28 / 32 = 3.5 px*m back at the image width
    generator = build_generator(gen_cfg, KRange(1.0, 4.0, "clamp"), 32).eval()
    split = _split()
    sample = split[0]
    assert sample["K_px_m"].tolist() == [2.0, 5.0] and sample["image"].shape[-1] == 28
    K_generated = torch.tensor([2.0, 3.5])
    with torch.no_grad(), pytest.warns(UserWarning, match="clamped to"):
        expected_frames = generator.generate_stack(sample["image"], sample["K_px_m"], num_steps=1, seed=0).frames[0]
    calls = stage2_stack_calls  # (stack, K) of every model call that is given a stack
    with pytest.warns(UserWarning, match="outside the trained range"):
        result = evaluate_variants(split, [ModelSpec("BD", _module(True), True)], generator=generator,
                                   dataset_stack="physics", limit=1, max_depth_m=100.0, progress=False,
                                   generator_steps=1)
    stage1 = _row(result, "BD + Stage-1")
    assert stage1["num_samples"] == 1 and math.isfinite(stage1["metrics"]["abs_rel"])
    assert "no base model" in _row(result, "base")["skipped"]
    # the model's Stage-1 call: the generator's frames with the generated K (the physics call keeps the split's K)
    stage1_calls = [K for stack, K in calls if torch.allclose(stack[0], expected_frames, atol=1e-6)]
    assert len(calls) == 2 and len(stage1_calls) == 1
    assert stage1_calls[0][0].tolist() == pytest.approx(K_generated.tolist(), rel=1e-6)
    physics_K = [K for stack, K in calls if torch.equal(stack[0], sample["stack"])]
    assert len(physics_K) == 1 and physics_K[0][0].tolist() == [2.0, 5.0]
    # the closed-form row on the Stage-1 stack, by hand with the generated K (the asked-for K gives another AbsRel)
    focus, gt, valid = float(sample["focus_m"]), sample["depth_m"].double(), sample["valid"].bool()
    valid = valid & (gt > 1e-3) & (gt < 100.0)
    by_hand = depth_from_stack(sample["image"][None], expected_frames[None], K_generated[None], focus,
                               max_depth_m=100.0, behind_focus=focus < 100.0)["depth_m"][0].double()
    abs_rel = float(((by_hand.clamp(1e-3, 100.0) - gt).abs() / gt)[valid].mean())
    dfb = _row(result, "depth-from-bokeh (closed form) on Stage-1")
    assert dfb["num_samples"] == 1 and dfb["metrics"]["abs_rel"] == pytest.approx(abs_rel, rel=1e-5)


def test_rows_without_stack_strengths_are_skipped():
    """An RGB-D sample with no stack of its own and no K: the oracle and Stage-1 rows say why they did not run."""
    from bokeh.evaluation import ModelSpec, evaluate_variants

    samples = [{"image": torch.rand(3, 28, 28), "depth_m": torch.full((1, 28, 28), 2.0), "name": "a"}]
    result = evaluate_variants(samples, [ModelSpec("BD", _module(True), True)], generator=object(), progress=False)
    for start in ("BD + physics", "BD + Stage-1", "depth-from-bokeh (closed form) on Stage-1"):
        assert "no stack strengths" in _row(result, start)["skipped"]
    control = _row(result, "BD (control: no stack)")
    assert control["control"] and control["num_samples"] == 1


def test_sources_limit_the_rows():
    from bokeh.evaluation import ModelSpec, build_rows

    bd = ModelSpec("BD", object(), True)
    rows = build_rows([bd], has_depth=True, has_generator=False, has_real=True, has_focus=True, sources=("real",))
    assert [r.label for r in rows] == ["base", "BD (control: no stack)", "BD + real aperture frames",
                                       "depth-from-bokeh (closed form) on real aperture frames"]
    with pytest.raises(ValueError, match="stack sources"):
        build_rows([bd], has_depth=True, has_generator=False, has_real=True, has_focus=True, sources=("phys",))


def test_resize_sample_scales_k_and_intrinsics():
    from bokeh.evaluation import resize_sample

    k = torch.tensor([[50.0, 0, 20.5], [0, 50.0, 13.5], [0, 0, 1]])
    sample = {"image": torch.rand(3, 28, 42), "depth_m": torch.full((1, 28, 42), 2.0),
              "frames": torch.rand(1, 3, 28, 42), "K_px_m": torch.tensor([6.0]), "intrinsics": k,
              "fx": 50.0, "fy": 50.0, "cx": 20.5, "cy": 13.5}  # an RGB-D dataset sample carries flat keys too
    out = resize_sample(sample, 14, 21)
    assert out["image"].shape == (3, 14, 21) and out["frames"].shape == (1, 3, 14, 21)
    assert float(out["K_px_m"][0]) == pytest.approx(3.0) and out["fx"] == pytest.approx(25.0)
    assert out["cx"] == pytest.approx((20.5 + 0.5) / 2 - 0.5) and bool(out["valid"].all())
    assert out["cx"] == pytest.approx(float(out["intrinsics"][0, 2]))
    # a sample with the matrix alone (a Stage-2 training sample) gets no flat keys its batches never had
    plain = resize_sample({k: v for k, v in sample.items() if k not in ("fx", "fy", "cx", "cy")}, 14, 21)
    assert "fx" not in plain and plain["intrinsics"][0, 0] == pytest.approx(25.0)


def test_dfd_on_stage1_stacks_uses_the_generators_training_focus(monkeypatch):
    """A generator trained at a fixed focus draws that focus into its frames: the closed-form row must invert with it,
    not with the sample's own focus."""
    import bokeh.evaluation as evaluation

    seen: dict[str, list[float]] = {"focus": []}

    def fake_stack(generator, image, K_px_m, **kwargs):
        return torch.stack([image] * len(K_px_m)), K_px_m

    def fake_dfd(reference, frames, K_px_m, focus_m, **kwargs):
        seen["focus"].append(float(focus_m))
        return torch.ones(1, *reference.shape[-2:])

    monkeypatch.setattr(evaluation, "generate_stage1_stack", fake_stack)
    monkeypatch.setattr(evaluation, "dfd_depth", fake_dfd)
    split = _split()
    sample_focus = float(split[0]["focus_m"])
    evaluation.evaluate_variants(split, [], generator=object(), generator_focus_m=7.5, dataset_stack="physics",
                                 limit=1, sources=("stage1",), progress=False)
    assert seen["focus"] == [7.5] and sample_focus != 7.5
    seen["focus"].clear()
    evaluation.evaluate_variants(split, [], generator=object(), dataset_stack="physics", limit=1,
                                 sources=("stage1",), progress=False)
    assert seen["focus"] == [sample_focus]
