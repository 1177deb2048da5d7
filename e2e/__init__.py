"""A real Kubernetes control plane as local processes, with simulated H800 GPU nodes.

No Docker here, so instead of kind the real kube-apiserver, kube-controller-manager,
kube-scheduler and etcd run as plain processes (the way envtest and kwokctl do), and kwok
plays the kubelets of N fake GPU nodes. Modules:

- `binaries`: builds the binaries from the Go module proxy through the tools module in
  `e2e/tools/`, into a cache outside the repository keyed by versions.
- `pki`: the certificates and admin kubeconfig, generated in-process.
- `nodes`: pure builders for the fake H800 nodes and the kwok configuration.
- `cluster`: `ControlPlane` starts, waits for, checks and stops the processes.
- `kube`: a small stdlib client for the API (tests, harness and node agent).
- `agent`: the node agent that runs a command at a pod's (loopback) IP.
- `fixtures`: the pytest plugin (session control plane, namespace per test).
- `cli`: `python -m sbs.e2e build|up|down|status|agent|gomod`.
"""
