"""Stage-2 under DDP on CPU: 2 processes (ddp_spawn, gloo) train, and the test metrics are synchronised."""

from __future__ import annotations


import pytest
import torch
from _tools import load_tool


@pytest.mark.slow
def test_ddp_spawn_two_processes_reports_metrics_over_the_whole_test_split(tmp_path):
    fit = load_tool("fit", "bokehdepth_tool_fit_ddp")
    run = tmp_path / "run"
    # 8 test scenes, 4 per batch: each process evaluates 4 of them; a per-process AbsRel would differ from the total
    result = fit.main(["--config", "stage2_smoke", "--config", "trainer/ddp_sim", f"run.dir={run}", "compare_base=false",
                       "data.synthetic.num_test=8", "data.synthetic.num_train=16"])
    reported = result["bokehdepth"]["test"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # 16 scenes / (2 processes x batch 4)

    # recompute in this process on all 8 test scenes with the checkpoint the DDP test used
    from bokeh.metrics import DepthMetrics
    from lightning_modules.config import load_config
    from lightning_modules.stage2 import Stage2Module, build

    module = Stage2Module.load_from_checkpoint(result["bokehdepth"]["best_checkpoint"], weights_only=False).eval()
    cfg = load_config(["stage2_smoke"], ["data.synthetic.num_test=8", "data.synthetic.num_train=16"])
    _, dm = build(cfg)
    dm.setup("test")
    total = DepthMetrics(min_depth_m=module.min_depth_m, max_depth_m=module.max_depth_m)
    rank0 = DepthMetrics(min_depth_m=module.min_depth_m, max_depth_m=module.max_depth_m)  # DistributedSampler: 0, 2, 4, 6
    dataset = dm.datasets["test"]
    with torch.no_grad():
        for i in range(len(dataset)):
            batch = torch.utils.data.default_collate([dataset[i]])
            pred = module.predict_batch(batch)
            total.update(pred, batch["depth_m"], batch["valid"])
            if i % 2 == 0:
                rank0.update(pred, batch["depth_m"], batch["valid"])
    expected = {k: float(v) for k, v in total.compute().items()}
    share = float(rank0.compute()["abs_rel"])
    assert abs(share - expected["abs_rel"]) > 1e-3 * expected["abs_rel"]  # one process alone would report otherwise
    for key in ("abs_rel", "rmse", "delta1", "silog"):
        assert reported[key] == pytest.approx(expected[key], rel=1e-4), key
