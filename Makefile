# KIC — KVM Integrated Containers. `make help` lists the targets.
# On a fresh Debian 12 machine, `make demo` and `make test` are all anyone needs:
# each installs what is missing first.

SHELL := /bin/bash
TARGET := x86_64-unknown-linux-gnu
TETHER := target/$(TARGET)/release/kic-tether
export KIC_TETHER := $(CURDIR)/$(TETHER)

.PHONY: help deps tether build images demo test bench bench-registry clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 18

deps: ## Install Debian packages and start libvirtd (idempotent)
	@scripts/deps.sh

tether: ## Build the static guest agent (PID 1 of every container VM)
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p kic-tether --target $(TARGET)

build: tether ## Build every binary (release)
	cargo build --release --workspace --bins

images: build ## Build the busybox and debian test images from Debian packages
	scripts/images.sh target/release/kic-mkimage all

demo: deps build images ## Run the embedded default: a registry with the test images and a container VM
	scripts/demo.sh

test: deps ## Run every test: lints, unit tests, VM and client black-box tests
	scripts/test.sh

bench: deps build images ## Print container-start vs bare-boot ratio and idle VM memory
	scripts/bench.sh

bench-registry: deps build ## Compare kic-registry with Distribution (throughput, GETs/s, RSS)
	bash tests/registry/bench.sh

clean: ## Remove build output
	cargo clean
	rm -rf build
