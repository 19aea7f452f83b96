# Task runner; CI runs `make test` through scripts/test.sh.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/posterior/target

.PHONY: fmt lint test bench run
fmt:
	cargo fmt --all
lint:
	cargo clippy --profile test --workspace --all-targets -- -D warnings
test:
	./scripts/test.sh
bench:
	./benches/run.sh
run:
	./scripts/run.sh
