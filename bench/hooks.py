"""mmengine hooks bench adds to every run: live progress for `bench status` and the progress bar."""
from __future__ import annotations

from pathlib import Path

from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class BenchProgressHook(Hook):
    """Writes ``state.json`` (iteration, max iterations, last loss) beside the run's work dir."""

    priority = "VERY_LOW"

    def __init__(self, interval: int = 5, min_period_s: float = 1.0):
        self.interval = interval
        self.min_period_s = min_period_s  # fast iterations on a GPU: at most one write a second (shared filesystems)
        self._last = 0.0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        import time

        if runner.rank != 0:  # rank 0 alone writes the run's files (state, checkpoints, results)
            return
        it = runner.iter + 1
        last = it == runner.max_iters
        if not last and (it % self.interval or time.monotonic() - self._last < self.min_period_s):
            return
        self._last = time.monotonic()
        from bench.state import write_state

        loss = None
        if isinstance(outputs, dict) and "loss" in outputs:
            try:
                value = outputs["loss"]
                loss = round(float(value.detach() if hasattr(value, "detach") else value), 4)
            except (TypeError, ValueError):
                loss = None
        write_state(Path(runner.work_dir).parent, state="running", iter=it, max_iters=runner.max_iters,
                    loss=loss, epoch=runner.epoch)
