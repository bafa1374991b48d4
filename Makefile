# The two commands of the README: `make demo` and `make test`. Each creates or
# reuses .venv and installs what it needs; nothing else is assumed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
REPO ?= model-repo
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint format bench zoo clean proto system-deps

demo: $(VENV)/.demo-deps
	$(VENV)/bin/edgecloud zoo build --repo $(REPO)
	$(VENV)/bin/edgecloud models list --repo $(REPO)
	$(VENV)/bin/edgecloud demo --repo $(REPO)

test: $(VENV)/.dev-deps system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian tools some tests use (network namespaces, TLS certificates, espeak-ng
# speech for the edge-filter test set). Installed
# when missing and we are root; otherwise those tests skip and say why.
system-deps:
	@missing=""; command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && apt-get install -y -qq $$missing >/dev/null) || \
	  echo "could not install$$missing: the tests that need them will skip"; fi

lint: $(VENV)/.dev-deps
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: $(VENV)/.dev-deps
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

zoo: $(VENV)/.demo-deps
	$(VENV)/bin/edgecloud zoo build --repo $(REPO)

bench: $(VENV)/.dev-deps system-deps zoo
	$(PY) bench/local_overhead.py --repo $(REPO)
	$(PY) bench/edge_footprint.py --repo $(REPO)
	$(PY) bench/router_overhead.py --repo $(REPO)
	$(PY) bench/cascade.py --repo $(REPO)
	$(PY) bench/hybrid_network.py --repo $(REPO)
	$(PY) bench/edge_filter.py --repo $(REPO)
	$(PY) bench/split.py --repo $(REPO)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || true
	$(PY) bench/server.py --repo $(REPO)
	$(PY) bench/request_path.py --repo $(REPO)
	$(PY) bench/wire_codec.py
	$(PY) bench/gpu_serving.py --repo $(REPO)  # measures only where torch sees a GPU

$(PY):
	python3 -m venv $(VENV)

# What `make demo` really runs: the zoo build (train), the local tour, and the
# hybrid step's real server (server) and its client (remote).
# The stamps depend on this Makefile too: a venv made by an older recipe (one
# that installed fewer extras) is brought up to date on the next make demo.
$(VENV)/.demo-deps: pyproject.toml Makefile | $(PY)
	$(PIP) -e ".[train,server,remote]"
	touch $@

$(VENV)/.dev-deps: pyproject.toml Makefile | $(PY)
	$(PIP) -e ".[dev]"
	touch $@ $(VENV)/.demo-deps

clean:
	rm -rf $(VENV) $(REPO) .pytest_cache .mypy_cache .ruff_cache

# gRPC stubs of the Open Inference Protocol. The descriptors go into a private
# pool so they never clash with another copy of package `inference` (e.g.
# tritonclient's) in the same process.
proto: $(VENV)/.dev-deps
	$(PIP) "grpcio-tools==1.76.0"  # emits protobuf 6 code: tritonclient needs protobuf<7
	cd src && ../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. edgecloud/proto/inference.proto
	sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/_POOL = _descriptor_pool.DescriptorPool()\nDESCRIPTOR = _POOL.AddSerializedFile(/' src/edgecloud/proto/inference_pb2.py
