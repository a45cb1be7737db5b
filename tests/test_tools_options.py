"""Bad option values of tools without a test file of their own (eval_physics_real, bench_physics, bench_stage2):
one line naming the option, exit code 2, refused before any scene is read or anything is benchmarked."""

from __future__ import annotations

import pytest

from tests._tools import error_line, load_tool

eval_real = load_tool("eval_physics_real")
bench_physics = load_tool("bench_physics")
bench_stage2 = load_tool("bench_stage2")


@pytest.mark.parametrize("extra, message", [
    (["--f-mm", "nan"], "--f-mm must be finite and > 0; got nan"),
    (["--f-wide", "-1"], "--f-wide must be finite and > 0; got -1"),
    (["--depth-scale", "0"], "--depth-scale must be finite and > 0; got 0"),
    (["--threads", "-1"], "--threads must be >= 0; got -1"),
    (["--crop-px", "-1"], "--crop-px must be >= 0; got -1"),
    (["--grid-focus", "0"], "--grid-focus must be >= 1; got 0"),
])
def test_eval_physics_real_names_a_bad_option_before_reading_data(tmp_path, capsys, extra, message):
    # --data has no index.csv: the option is refused first, and no output folder is made
    assert eval_real.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--runs", "0"], "--runs and --threads must be >= 1"),
    (["--threads", "0"], "--runs and --threads must be >= 1"),
    (["--max-radius", "nan"], "--max-radius must be finite and > 0"),
    (["--ours", "[1]"], "--ours must be a JSON object"),
    (["--blender-dir", "missing"], "--blender-dir missing: no scenes.json there"),
    (["--out", "{file}/x.json"], "expected a file path (not a folder, not under a file)"),
    (["--out", "{dir}"], "expected a file path (not a folder, not under a file)"),
])
def test_bench_physics_refuses_bad_options_before_benchmarking(tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("x")
    extra = [e.format(file=tmp_path / "file", dir=tmp_path) for e in extra]
    with pytest.raises(SystemExit) as stop:
        bench_physics.main(["--sizes", "32", "--out", str(tmp_path / "b.json"), *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--threads", "0"], "--threads 0"),
    (["--warmup", "-1"], "--warmup -1"),
    (["--mlp-ratio", "nan"], "--mlp-ratio must be finite and > 0; got nan"),
    (["--attn-ratio", "0"], "--attn-ratio must be finite and > 0; got 0"),
    (["--out", "{file}/x.json"], "expected a file path (not a folder, not under a file)"),
    (["--taps", "-1", "-1"], "--taps must name distinct decoder taps; got -1 -1"),
])
def test_bench_stage2_refuses_bad_options_before_benchmarking(tmp_path, capsys, extra, message):
    (tmp_path / "file").write_text("x")
    extra = [e.format(file=tmp_path / "file") for e in extra]
    with pytest.raises(SystemExit) as stop:
        bench_stage2.main(["--sizes", "tiny", "--frames", "1", "--repeats", "1", *extra])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_stage2_names_a_tap_the_model_does_not_have(tmp_path, capsys):
    # the tap range depends on the model size: the model's own check, reported as one line, exit code 2
    argv = ["--sizes", "tiny", "--frames", "1", "--repeats", "1", "--taps", "9", "--out", str(tmp_path / "b.json")]
    assert bench_stage2.run_reporting_errors(bench_stage2.main, argv) == 2
    assert "dsfa.taps entry 9 is not a decoder tap index in [-4, 3]" in error_line(capsys, skip="bench_stage2:")
    assert not (tmp_path / "b.json").exists()


def test_tools_print_the_projects_warnings_as_one_line_and_others_in_pythons_format():
    import warnings

    import _bootstrap  # loaded with the tools above (tools/ is on sys.path)

    ours = str(_bootstrap.REPO_ROOT / "bokeh" / "io.py")
    assert warnings.formatwarning("x.png: grayscale image replicated to RGB", UserWarning, ours, 12,
                                  "image = read_image(path)") == "warning: x.png: grayscale image replicated to RGB\n"
    theirs = warnings.formatwarning("deprecated", DeprecationWarning, "/usr/lib/python3/site-packages/lib.py", 7, "f()")
    assert theirs.startswith("/usr/lib/python3/site-packages/lib.py:7: DeprecationWarning: deprecated")
