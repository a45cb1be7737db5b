"""tools/export_synthetic.py: scenes as an RGB-D folder + manifests that Stage-2 and bokeh.datasets read."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from _tools import TOOLS_DIR, error_line, load_tool


def _tool(name: str):
    return load_tool(name).main


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "scenes"
    _tool("export_synthetic")(["--out", str(out), "--num", "3", "--split", "test", "--size", "28", "28",
                               "--physics-K", "2", "5"])
    return out


def test_manifest_loads_through_stage2_datamodule_with_the_default_pixels(exported):
    """The physics manifest is read by Stage-2's manifest DataModule and holds the synthetic test split's scenes
    and stacks (same seeds, same renderer settings, 8-bit like its cache)."""
    from lightning_modules.data import SyntheticStackDataModule, build_datamodule

    dm = build_datamodule({"kind": "manifest", "batch_size": 2, "num_workers": 0,
                           "manifest": {"test": str(exported / "stacks_physics.jsonl"), "crop": None,
                                        "max_depth_m": 100.0}})
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 28, 28) and batch["stack"].shape == (2, 2, 3, 28, 28)
    assert torch.equal(batch["K_px_m"], torch.tensor([[2.0, 5.0], [2.0, 5.0]]))
    ref = SyntheticStackDataModule(height=28, width=28, num_train=0, num_val=0, num_test=3, K_px_m=[2.0, 5.0],
                                   render_options={"layer_ratio": 1.5}, max_depth_m=100.0)
    ref.setup("test")
    for i in range(2):
        want = ref.datasets["test"][i]
        assert torch.equal(batch["depth_m"][i], want["depth_m"])
        assert (batch["image"][i] - want["image"]).abs().max() <= 0.5 / 255
        assert (batch["stack"][i] - want["stack"]).abs().max() <= 1.5 / 255
        assert float(batch["focus_m"][i]) == pytest.approx(float(want["focus_m"]), abs=1e-5)
        assert torch.allclose(batch["intrinsics"][i], want["intrinsics"])


def test_rgbd_folder_and_scene_manifest(exported):
    from bokeh.datasets import open_dataset
    from physics.scenes import make_scene

    ds = open_dataset(exported)
    assert ds.kind == "generic" and len(ds) == 3
    scene = make_scene(2_000_001, 28, 28)
    sample = ds[1]
    assert torch.equal(sample["depth_m"], torch.as_tensor(scene.depth_m, dtype=torch.float32))
    assert sample["fx"] == pytest.approx(float(scene.intrinsics[0, 0]), rel=1e-6)
    rows = [json.loads(line) for line in (exported / "scenes.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [2_000_000, 2_000_001, 2_000_002]
    assert rows[1]["focus_m"] == pytest.approx(float(scene.focus_m), abs=1e-5)
    assert all((exported / r["image"]).is_file() and (exported / r["depth"]).is_file() for r in rows)
    assert "stack" not in rows[0]  # make_stack.py input: image, depth, intrinsics, focus


def test_bad_inputs(exported, tmp_path):
    main = _tool("export_synthetic")
    with pytest.raises(FileExistsError):
        main(["--out", str(exported), "--num", "1"])
    with pytest.raises(ValueError, match="--num"):
        main(["--out", str(tmp_path / "a"), "--num", "0"])
    with pytest.raises(ValueError, match="focus-m"):
        main(["--out", str(tmp_path / "c"), "--num", "1", "--physics-K", "2", "--focus-m", "0"])
    with pytest.raises(ValueError, match="physics-K"):
        main(["--out", str(tmp_path / "b"), "--num", "1", "--physics-K", "0"])


def test_scene_options_export_the_scenes_with_appearance_cues(tmp_path):
    from bokeh.io import read_image
    from physics.scenes import make_scene

    out = tmp_path / "cues"
    settings = _tool("export_synthetic")(["--out", str(out), "--num", "2", "--split", "val", "--size", "24", "24",
                                          "--physics-K", "3", "--scene-options", '{"appearance_cues": 1.0}'])
    assert settings["scene_options"] == {"appearance_cues": 1.0}
    row = json.loads((out / "scenes.jsonl").read_text().splitlines()[1])
    scene, plain = make_scene(row["seed"], 24, 24, appearance_cues=1.0), make_scene(row["seed"], 24, 24)
    image = read_image(out / row["image"])
    assert (image - torch.as_tensor(scene.image)).abs().max() <= 0.5 / 255  # the hazed scene, 8-bit
    assert (image - torch.as_tensor(plain.image)).abs().max() > 0.05       # not the depth-hiding one


@pytest.mark.parametrize("text, message", [
    ("appearance_cues=1", "must be a JSON object such as"),
    ("[1, 2]", "must be a JSON object, got list"),
    ('{"apearance_cues": 1}', r"unknown keys \['apearance_cues'\]"),
])
def test_bad_scene_options_are_refused_before_writing(tmp_path, text, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        _tool("export_synthetic")(["--out", str(out), "--num", "1", "--scene-options", text])
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--physics-K", "-2"], "physics-K"),
    (["--size", "-32", "32"], "--size"),
    (["--focus-m", "-1"], "focus-m"),
    (["--physics-K", "1e9"], "gives a blur radius of"),
])
def test_bad_input_leaves_no_folder_and_keeps_a_previous_output(tmp_path, extra, message):
    main = _tool("export_synthetic")
    with pytest.raises(ValueError, match=message):
        main(["--out", str(tmp_path / "new"), "--num", "1", "--size", "16", "16", *extra])
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    old.mkdir()
    (old / "export.json").write_text("previous")
    with pytest.raises(ValueError, match=message):
        main(["--out", str(old), "--num", "1", "--size", "16", "16", "--overwrite", *extra])
    assert [p.name for p in old.iterdir()] == ["export.json"] and (old / "export.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_k_too_large_is_refused_naming_k_radius_and_limit(tmp_path):
    # K * max |1/focus - 1/depth| over the default 0.5..10 m scenes: 30 * (1/0.5 - 1/100) = 59.7 px > 2 x 24 px
    with pytest.raises(ValueError, match=r"--physics-K 30 px\*m gives a blur radius of 59\.7 px .*"
                                         r"limit of 48 px"):
        _tool("export_synthetic")(["--out", str(tmp_path / "o"), "--num", "1", "--size", "16", "24",
                                   "--physics-K", "2", "30", "--focus-m", "100"])
    assert not (tmp_path / "o").exists()


def test_failure_while_writing_restores_the_previous_output(tmp_path, monkeypatch):
    tool = load_tool("export_synthetic")
    old = tmp_path / "old"
    old.mkdir()
    (old / "export.json").write_text("previous")

    def broken(*args, **kwargs):
        (old / "partial.png").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tool, "export", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        tool.main(["--out", str(old), "--num", "1", "--overwrite"])
    assert [p.name for p in old.iterdir()] == ["export.json"]


@pytest.mark.parametrize("text, message", [
    ('{"num_objects": 3}', r"--scene-options \{\"num_objects\": 3\}: num_objects must be a pair \(lo, hi\), got 3"),
    ('{"appearance_cues": 1.0, "depth_range_m": [5, 1]}', r"--scene-options .*: .*depth_range_m.*\[5, 1\]"),
])
def test_scene_option_values_make_scene_cannot_use_are_refused_naming_the_key(tmp_path, text, message):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        _tool("export_synthetic")(["--out", str(out), "--num", "1", "--size", "16", "16", "--scene-options", text])
    assert not out.exists()


def _run_as_script(monkeypatch, *argv: str) -> int:
    """Run tools/export_synthetic.py as ``__main__`` in this process; returns its exit code (0 if none)."""
    load_tool("export_synthetic")  # puts tools/ on sys.path for `import _bootstrap`
    monkeypatch.setattr(sys, "argv", ["export_synthetic.py", *argv])
    try:
        runpy.run_path(str(TOOLS_DIR / "export_synthetic.py"), run_name="__main__")
    except SystemExit as stop:
        return stop.code
    return 0


def test_script_reports_bad_scene_options_and_unusable_out_as_one_line(tmp_path, monkeypatch, capsys):
    assert _run_as_script(monkeypatch, "--out", str(tmp_path / "a"), "--num", "1", "--size", "16", "16",
                          "--scene-options", '{"num_objects": 3}') == 2
    assert error_line(capsys).startswith("error: --scene-options {\"num_objects\": 3}: num_objects must be a pair")
    (tmp_path / "blocker.png").write_bytes(b"a file")
    assert _run_as_script(monkeypatch, "--out", str(tmp_path / "blocker.png" / "sub"), "--num", "1") == 2
    assert str(tmp_path / "blocker.png") in error_line(capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["blocker.png"]


def test_output_folder_that_cannot_be_made_is_an_error_line(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):  # a read-only place: bokeh.io.output_dir's mkdir fails
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    out = tmp_path / "out"
    assert _run_as_script(monkeypatch, "--out", str(out), "--num", "1", "--size", "16", "16") == 2
    assert error_line(capsys) == f"error: cannot create output folder {out}: Permission denied"
