#!/usr/bin/env python
"""Train and test a task from YAML configs: ``python tools/fit.py --config stage2.yaml [--config more.yaml] [key=value ...]``.

- Configs merge in order (bare names resolve in configs/), then ``key=value`` overrides; an unknown key or a value
  of the wrong type is an error naming the key, raised before anything is written.
- The run directory is ``cfg.run.dir`` or ``<cfg.run.root>/<cfg.name>/<YYYYmmdd-HHMMSS>``; it holds the resolved
  ``config.yaml``, checkpoints (last + best), CSV and TensorBoard logs, image grids and the results.
- ``ckpt_path=last`` resumes the newest run of this name (or ``run.dir``) from its ``last.ckpt``;
  ``ckpt_path=/path/x.ckpt`` starts from that checkpoint.
- Multi-GPU / multi-node: ``--config trainer/ddp_gpu.yaml trainer.devices=8 trainer.num_nodes=4``, launched by
  torchrun or srun (see configs/trainer/ddp_gpu.yaml).
- Before the run folder is made, the task checks everything the config decides: the trainer settings as Lightning
  resolves them, the model (built from config; local weight paths must exist), the data and the splits a fit + test
  reads. A bad setting ends as one line ``config error: ...`` (or ``data error: ...``) and exit status 2.
- The closing line gives the wall time from the process start (imports included) when run as a script, from the
  ``main()`` call when called in-process; ``summary.json`` records it with what it measures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import _bootstrap  # noqa: F401  (offline mode, the repository on sys.path, the bokeh guard)
from _cli import config_errors_exit

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from lightning_modules.config import ConfigError, check_number, load_config, save_config  # noqa: E402
from lightning_modules.tasks import get_task  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", "-c", action="append", required=True, help="YAML config (path or bare name in configs/); repeat to merge")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (dotted keys), e.g. trainer.max_epochs=2")
    return parser.parse_args(argv)


def _has_checkpoint(run_dir: Path) -> bool:
    return any(run_dir.glob("checkpoints/last.ckpt")) or any(run_dir.glob("*/checkpoints/last.ckpt")) or any(run_dir.glob("*/result.json"))


def resolve_run_dir(cfg: DictConfig) -> tuple[Path, bool]:
    """(run_dir, resume): the directory this run writes to, and whether it resumes an earlier run there."""
    run_cfg = cfg.get("run", {}) or {}
    root = Path(run_cfg.get("root", "runs")) / str(cfg.get("name", cfg.get("task", "run")))
    explicit = run_cfg.get("dir")
    resume = str(cfg.get("ckpt_path") or "") == "last"
    if resume:
        if explicit:
            run_dir = Path(explicit)
            if not _has_checkpoint(run_dir):
                raise ConfigError(f"ckpt_path=last: run.dir={run_dir} holds no checkpoints/last.ckpt to resume from")
            return run_dir, True
        candidates = sorted((p for p in root.glob("*") if p.is_dir() and _has_checkpoint(p)), key=lambda p: p.name)
        if not candidates:
            raise ConfigError(f"ckpt_path=last: no earlier run with a last.ckpt under {root}")
        return candidates[-1], True
    if explicit:
        return Path(explicit), False
    if rank_zero_only.rank != 0 and os.environ.get("BOKEHDEPTH_RUN_DIR"):  # started by Lightning's "ddp" launcher
        return Path(os.environ["BOKEHDEPTH_RUN_DIR"]), False
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    n = 1
    while run_dir.exists():
        run_dir = root / f"{stamp}-{n}"
        n += 1
    return run_dir, False


def seconds_since_process_start() -> float | None:
    """Wall seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        started = float(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def main(argv: list[str] | None = None, *, from_process_start: bool = False) -> dict:
    """Load configs, build, create the run dir, fit + test. Returns the task's results (with ``wall_s``).

    ``from_process_start`` (the script): the wall time counts from the process start, so it includes the start-up
    (Python, torch and Lightning imports); otherwise from this call."""
    start = time.perf_counter()
    startup_s = seconds_since_process_start() if from_process_start else None
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    for key in ("task",):
        if key not in cfg:
            raise ConfigError(f"the config has no '{key}' key (e.g. task: stage2)")
    task = get_task(str(cfg.task))
    run_dir, resume = resolve_run_dir(cfg)
    os.environ["BOKEHDEPTH_RUN_DIR"] = str(run_dir)  # inherited by processes that Lightning's "ddp" launcher starts
    is_rank_zero = rank_zero_only.rank == 0
    ckpt_path = cfg.get("ckpt_path")
    explicit_ckpt = str(ckpt_path) if ckpt_path and str(ckpt_path) != "last" else None
    if explicit_ckpt is not None and not Path(explicit_ckpt).is_file():  # before any folder or process is made
        what = "is a folder, not a checkpoint file" if Path(explicit_ckpt).is_dir() else "no such checkpoint file"
        raise ConfigError(f"ckpt_path={explicit_ckpt}: {what} (expected a .ckpt file, 'last' to resume the newest "
                          "run, or null)")
    seed = int(cfg.get("seed", 0))
    L.seed_everything(seed, workers=True, verbose=False)  # reported with the run dir: a config error stays one line
    if cfg.get("threads") is not None:
        check_number(cfg.threads, "threads", 0, integer=True)  # 0 / null: torch's default
    if cfg.get("threads"):  # intra-op threads; 1 is much faster than 2 on a machine already busy with other jobs
        torch.set_num_threads(int(cfg.threads))

    def prepare_run_dir() -> Path:
        """Called by the task once every model and DataModule is built, i.e. once the config is known good."""
        if not is_rank_zero:
            return run_dir
        if not resume and run_dir.exists() and any(run_dir.iterdir()) and not (cfg.get("run", {}) or {}).get("overwrite", False):
            raise ConfigError(f"run.dir={run_dir} exists and is not empty; pick another, set run.overwrite=true, or resume with ckpt_path=last")
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / ("config.yaml" if not resume else "config_resume.yaml"))
        print(f"run dir: {run_dir} (seed {seed})" + (" (resuming)" if resume else ""))
        return run_dir

    if hasattr(task, "run"):
        results = task.run(cfg, prepare_run_dir, resume=resume, ckpt_path=explicit_ckpt)
    else:  # a task with build() only: one fit + test
        from lightning_modules.tasks import check_trainer_settings, fit_and_test

        check_trainer_settings(cfg.trainer)
        built = task.build(cfg)
        results = fit_and_test(cfg, prepare_run_dir(), task.build, resume=resume, built=built, ckpt_path=explicit_ckpt)
    main_s = time.perf_counter() - start
    if startup_s is not None:
        wall, measures = startup_s + main_s, "process start to the end of main() (start-up included)"
        print(f"total wall time: {wall:.0f} s ({wall / 60:.1f} min) from the process start to here = start-up "
              f"(imports) {startup_s:.0f} s + config, build, fit and test {main_s:.0f} s; run dir: {run_dir}")
    else:
        wall, measures = main_s, "fit.main() call: config, build, fit and test (process start-up not included)"
        print(f"fit.main() wall time (config, build, fit and test; start-up not included): {wall:.0f} s "
              f"({wall / 60:.1f} min); run dir: {run_dir}")
    if isinstance(results, dict):
        results["wall_s"] = wall  # what it measures: summary.json's wall_measures
        if is_rank_zero and run_dir.is_dir():
            from bokeh.io import write_json

            summary = {"wall_s": wall, "wall_measures": measures, "startup_s": startup_s, "main_s": main_s,
                       "argv": list(argv if argv is not None else sys.argv[1:]), "torch_threads": torch.get_num_threads()}
            if "comparison" in results:
                summary["comparison"] = {k: results["comparison"][k] for k in ("abs_rel_ratio", "goal_met", "times")}
            write_json(run_dir / "summary.json", summary)
    return results


if __name__ == "__main__":
    with config_errors_exit():
        main(from_process_start=True)
