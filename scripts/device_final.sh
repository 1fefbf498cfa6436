#!/usr/bin/env bash
# The closing device call: the whole GPU test suite, then the engine runs (scripts/device_engine.sh),
# the end-to-end A/B (scripts/device_ab.sh) and the CI sweep (scenarios/sweeps/ci.toml), through
# scripts/device_targets.sh. Everything lands in one archive, $OUT/final.tgz; summaries printed.
# Usage (device machine): bash scripts/device_final.sh
OUT=${OUT:-/tmp/device_final} STAGES="tests engine ab sweep" ARCHIVE=final.tgz ARMS=${ARMS:-"graph:tight graph:small-n eager:cublas"} \
  exec bash "$(dirname "$0")/device_targets.sh"
