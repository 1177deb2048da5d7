"""Faults under load (`make chaos`) and the soak (`make soak`) on the e2e control plane.

The operator (`manifests/overlays/dev`), the scheduler and the engines all run as pods, started by
the node agent as a kubelet would (`sbs.e2e.agent`), engines as `sbs-engine` emulators. A trace
replay drives the scheduler's Service while a scenario injects its faults (`scenarios.py`);
`load.py` classifies every request, `report.py` prints the table. docs/reliability.md has the figures.
"""
