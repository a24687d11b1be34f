# The single entry point: `make help` lists the targets.
#
# Builds share one target directory outside the checkout, so a fresh clone (CI) reuses
# what an earlier build on the same machine compiled.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/platform-target
export CARGO_TERM_COLOR ?= never
CARGO ?= cargo
NEXTEST_PROFILE ?= $(if $(CI),ci,default)
# The Kafka-protocol broker the consumer's end-to-end tests, demo and benchmark start.
TANSU_VERSION := 0.6.0
# The six binaries, one image each (Dockerfile, --build-arg SERVICE=...).
SERVICES := provisioner-job oc-sync-job generic-consumer devops-api gandalf-aggregator gandalf-cluster
IMAGE_REGISTRY ?= registry.example.com/platform
IMAGE_TAG ?= $(shell git rev-parse HEAD 2>/dev/null || echo dev)
export TANSU ?= $(or $(shell command -v tansu 2>/dev/null),$(HOME)/.cargo/bin/tansu)

.DEFAULT_GOAL := help
.PHONY: help tools build fmt lint proto-lint deploy-lint test test-only charts-test images demo bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

tools: ## Install what the build and tests need and is missing (nextest, tansu, C toolchain, OpenSSL headers)
	@command -v cc >/dev/null || { apt-get update -qq && apt-get install -y -qq build-essential; }
	@command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl; }
	@# rdkafka builds librdkafka from source against the system OpenSSL and zlib headers.
	@dpkg -s libssl-dev zlib1g-dev >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libssl-dev zlib1g-dev; }
	@$(CARGO) nextest --version >/dev/null 2>&1 || $(CARGO) install --locked cargo-nextest
	@# tansu: a Kafka-protocol broker in one binary (in-memory storage); ~12 min to build.
	@test -x "$(TANSU)" || $(CARGO) install --locked tansu --version $(TANSU_VERSION) --features dynostore

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

fmt: ## Format the code
	$(CARGO) fmt --all

lint: proto-lint ## rustfmt check, clippy with warnings as errors, buf lint
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

proto-lint: ## buf lint over proto/ (buf from the npm registry)
	scripts/buf-lint.sh

deploy-lint: ## hadolint on the Dockerfile, the workflow linters on .github/workflows (offline)
	scripts/lint-deploy.sh

test: tools lint deploy-lint ## Everything CI checks: lint, all tests against a throwaway PostgreSQL, chart checks
	$(CARGO) build --workspace --all-targets --locked
	scripts/with-postgres.sh $(CARGO) nextest run --workspace --locked --profile $(NEXTEST_PROFILE)
	$$(scripts/python-venv.sh) scripts/check_charts.py $(CARGO_TARGET_DIR)/debug
	$$(scripts/python-venv.sh) -m unittest discover -s scripts/tests

test-only: tools ## All tests, without the lint step
	scripts/with-postgres.sh $(CARGO) nextest run --workspace --profile $(NEXTEST_PROFILE)

charts-test: ## Lint, render and check the Helm charts (Helm's engine, no cluster needed), and the GitOps script's tests
	$(CARGO) build --workspace --bins
	$$(scripts/python-venv.sh) scripts/check_charts.py $(CARGO_TARGET_DIR)/debug
	$$(scripts/python-venv.sh) -m unittest discover -s scripts/tests

images: ## Build the six images (needs a Docker engine): IMAGE_REGISTRY, IMAGE_TAG
	@docker info >/dev/null 2>&1 || { echo "make images: no Docker engine reachable (docker info failed); the images build where one runs" >&2; exit 1; }
	@for s in $(SERVICES); do \
		echo "== $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG)"; \
		docker build --build-arg SERVICE=$$s --build-arg REVISION=$(IMAGE_TAG) \
			--build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) \
			-t $(IMAGE_REGISTRY)/$$s:$(IMAGE_TAG) . || exit 1; \
	done

demo: tools ## Run each service's main flow locally on embedded defaults
	$(CARGO) build --workspace --bins --examples
	scripts/demo.sh

bench: tools ## Benchmarks with ratios against same-run baselines (see docs/benchmarks.md)
	scripts/with-postgres.sh $(CARGO) bench -p provisioner-job --bench apply
	$(CARGO) bench -p oc-sync-job --bench sync
	scripts/with-postgres.sh $(CARGO) bench -p devops-api --bench api
	$(CARGO) bench -p gandalf-aggregator --bench gandalf
	# The allocator setting generic-consumer's deployment gives it (see its README).
	MIMALLOC_PURGE_DELAY=-1 $(CARGO) bench -p generic-consumer --bench consume

clean: ## Remove build output
	$(CARGO) clean
