"""Profiles the whole life of one service process with pyinstrument (bench only).

`run.py --profile <service>` puts this directory first on that service's PYTHONPATH and
sets BENCH_PYINSTRUMENT_OUT; Python imports `sitecustomize` at start-up, so sampling
begins before the service's own imports and the session is saved when the process
exits after SIGTERM. Wall-clock samples every millisecond of the main thread; time the
event loop spends waiting shows up as self time of the loop's run call.
"""

from __future__ import annotations

import atexit
import os

_OUT = os.environ.get("BENCH_PYINSTRUMENT_OUT", "")

if _OUT:
    from pyinstrument import Profiler

    _profiler = Profiler(interval=0.001, async_mode="disabled")
    _profiler.start()

    def _save() -> None:
        session = _profiler.stop()
        session.save(_OUT + ".pyisession")
        with open(_OUT + ".txt", "w", encoding="utf-8") as out:
            out.write(_profiler.output_text(unicode=True, color=False, show_all=False))

    atexit.register(_save)
