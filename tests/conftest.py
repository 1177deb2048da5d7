# The e2e control plane fixtures (control_plane, kube, namespace, node_agent, kueue, kueue_namespace):
# see e2e/fixtures.py.
pytest_plugins = ["sbs.e2e.fixtures"]
