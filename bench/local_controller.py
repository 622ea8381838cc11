"""submitit's local job controller, run by bench so that a job's end is known even when it is killed.

submitit's controller waits for the job's task processes and exits without saying how they ended; a
task killed by a signal (``kill -9``, the OOM killer) wrote nothing, so its launcher could only guess
from the last line of its log. This controller is submitit's own (same protocol, same environment),
and it writes the tasks' exit statuses to ``<folder>/<job id>_exit_codes.json`` (a negative status is
the signal that ended the task), which :func:`bench.launch.run_local` reads.

Started as ``python -m bench.local_controller <folder>`` by :class:`bench.launch.BenchLocalExecutor`.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from submitit.local.local import Controller


class RecordingController(Controller):
    def wait(self, freq: int = 24):
        codes = super().wait(freq)
        path = Path(self.folder) / f"{self.pid}_exit_codes.json"
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"exit_codes": list(codes)}))
            os.replace(tmp, path)
        except OSError:
            pass  # a full disk: the launcher falls back on what it can see
        return codes


if __name__ == "__main__":
    assert len(sys.argv) == 2, "usage: python -m bench.local_controller <submitit_folder>"
    RecordingController(Path(sys.argv[1])).run()
