"""A real Kubernetes control plane as local processes, with simulated H800 GPU nodes.

No Docker here, so instead of kind the real kube-apiserver, kube-controller-manager,
kube-scheduler and etcd run as plain processes (the way envtest and kwokctl do), and kwok
plays the kubelets of N fake GPU nodes. The API is reached through `sbs.kube` (its blocking
client). Modules:

- `binaries`: builds the binaries from the Go module proxy through the tools module in
  `e2e/tools/`, into a cache outside the repository keyed by versions.
- `pki`: the certificates and admin kubeconfig, generated in-process.
- `nodes`: pure builders for the fake H800 nodes and the kwok configuration.
- `control_plane`: `ControlPlane` starts, waits for, checks and stops the processes.
- `slots`: the per-cluster state directory and pod network, reclaimed when its processes are gone.
- `crds`: installs CustomResourceDefinitions and waits until they are Established.
- `waits`: waiting for a condition with a timeout.
- `toolcache`: cached, stamped builds of tool environments under `~/.cache/` (also for tests and
  benchmarks: SGLang, the routers, hadolint).
- `procs`: stopping a child's process group.
- `agent`: the node agent that runs a command at a pod's (loopback) IP.
- `kueue`: Kueue v0.17 built from the Go module proxy (`e2e/kueue/`), run against the plane with
  URL webhooks signed by the plane's CA, and its queues (Topology, flavor, ClusterQueue, LocalQueue).
- `fixtures`: the pytest plugin (session control plane, namespace per test).
- `cli`: `python -m sbs.e2e build|up|down|status|agent|gomod|demo-operator [--kueue]`.
"""
