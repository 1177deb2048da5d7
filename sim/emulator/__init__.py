"""SGLang-compatible engine emulator: SGLang's HTTP API over the shared cost model, in real time.

The public face: `EngineSettings`, `start_engine(settings) -> RunningEngine` (in-process, for tests
and benchmarks) and the `sbs-engine` CLI (`sbs.sim.emulator.cli`). docs/emulator.md says what is
faithful to SGLang 0.5.23 and what is simplified.
"""

from sbs.sim.emulator.server import RunningEngine, start_engine
from sbs.sim.emulator.settings import EngineSettings

__all__ = ["EngineSettings", "RunningEngine", "start_engine"]
