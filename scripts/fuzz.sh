#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ (or the ones named) for a bounded time each.
#
#   scripts/fuzz.sh                      # every target, 60 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh     # 5 min each
#   scripts/fuzz.sh mconn_recv config    # only these
#
# Environment:
#   FUZZ_SECONDS   time per target, seconds (default 60)
#   FUZZ_CMIN      1 (default): minimize each target's corpus after its run (cargo fuzz cmin),
#                  keeping the hand-written seed-* files; 0: keep every new input
#   FUZZ_TOOLCHAIN rustup toolchain to use (default nightly)
#
# New interesting inputs go to fuzz/corpus/<target>/ (cargo fuzz's default corpus, replayed by
# `cargo test --test fuzz_corpus`); crashes, timeouts and out-of-memory inputs go to
# fuzz/artifacts/<target>/. The script runs every target even after a finding, then exits 1
# and lists the findings if there was any.
#
# Needs a nightly toolchain, cargo-fuzz and a C++ compiler (libfuzzer-sys builds libFuzzer).
# Missing nightly or cargo-fuzz are installed (estimated: about 1 min to download a minimal
# nightly, 2-3 min to build cargo-fuzz on two cores). The first build of the targets took
# 9 min on a busy two-core machine (2m41 of CPU); later builds only rebuild what changed.
set -euo pipefail

cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-60}"
CMIN="${FUZZ_CMIN:-1}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"

# target:max_len. max_len bounds the inputs libFuzzer makes; each is a little above the
# largest input the target uses (frames of 1044 bytes, two packets of the 1,056-byte maximum, a
# NodeInfo of 10 KiB, a pex response at the largest fuzzed limit of 39 addresses, 12,506 bytes,
# ...), so every size limit of the decoder is reachable.
TARGETS=(
  handshake:4096
  handshake_auth:1100
  frame_open:4200
  mconn_packet:2200
  mconn_recv:4096
  node_info:11000
  pex_message:12600
  address_book:8192
  config:4096
  node_key:512
  net_address:512
  uvarint:128
)

if [[ $# -gt 0 ]]; then
  selected=()
  for name in "$@"; do
    found=""
    for entry in "${TARGETS[@]}"; do
      [[ "${entry%%:*}" == "$name" ]] && found="$entry"
    done
    if [[ -z "$found" ]]; then
      echo "unknown target: $name (known: ${TARGETS[*]%%:*})" >&2
      exit 2
    fi
    selected+=("$found")
  done
  TARGETS=("${selected[@]}")
fi

if ! rustup toolchain list | grep -q "^${TOOLCHAIN}"; then
  echo "== installing the ${TOOLCHAIN} toolchain (minimal profile, about 1 min)"
  rustup toolchain install "${TOOLCHAIN}" --profile minimal
fi
if ! cargo "+${TOOLCHAIN}" fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (builds from source, about 2-3 min)"
  cargo install cargo-fuzz --locked
fi
if ! command -v c++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  echo "no C++ compiler found: libFuzzer needs one (e.g. apt-get install g++)" >&2
  exit 2
fi

fuzz() {
  cargo "+${TOOLCHAIN}" fuzz "$@"
}

echo "== ${#TARGETS[@]} targets x ${SECONDS_PER_TARGET} s = $(( ${#TARGETS[@]} * SECONDS_PER_TARGET )) s of fuzzing (plus builds)"
# --debug-assertions: integer overflow and debug_assert! panic, so they are findings too.
fuzz build --fuzz-dir fuzz --debug-assertions

failed=()
for entry in "${TARGETS[@]}"; do
  target="${entry%%:*}"
  max_len="${entry#*:}"
  corpus="fuzz/corpus/${target}"
  mkdir -p "$corpus"
  before=$(find "$corpus" -type f | wc -l)
  echo "== ${target}: ${SECONDS_PER_TARGET} s, max_len ${max_len}, corpus ${before} files"
  if ! fuzz run --fuzz-dir fuzz --debug-assertions "$target" -- \
      -max_total_time="${SECONDS_PER_TARGET}" -max_len="${max_len}" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
    failed+=("$target")
  fi
  if [[ "$CMIN" == 1 ]]; then
    # cmin renames what it keeps to content hashes and drops what adds no coverage; the
    # hand-written seeds are kept under their names whatever it decides. -use_counters=0
    # (edges, not hit-count buckets) and -set_cover_merge=1 (a greedy set cover rather than
    # smallest files first) keep the committed corpus to tens or hundreds of files a target.
    seeds=$(mktemp -d)
    find "$corpus" -maxdepth 1 -name 'seed-*' -exec cp {} "$seeds"/ \;
    fuzz cmin --fuzz-dir fuzz --debug-assertions "$target" -- \
        -max_len="${max_len}" -use_counters=0 -set_cover_merge=1 >/dev/null 2>&1 \
      || echo "   (cmin failed; corpus left unminimized)"
    # Put the seeds back and drop cmin's content-hash copies of them.
    for seed in "$seeds"/*; do
      [[ -f "$seed" ]] || continue
      cp "$seed" "$corpus"/
      rm -f "$corpus/$(sha1sum < "$seed" | cut -d' ' -f1)"
    done
    rm -rf "$seeds"
  fi
  after=$(find "$corpus" -type f | wc -l)
  echo "== ${target}: corpus ${before} -> ${after} files"
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== FINDINGS in: ${failed[*]}" >&2
  for target in "${failed[@]}"; do
    ls -1 "fuzz/artifacts/${target}/" 2>/dev/null | sed "s|^|   fuzz/artifacts/${target}/|" >&2
  done
  echo "Replay one: cargo +${TOOLCHAIN} fuzz run --fuzz-dir fuzz <target> <artifact>" >&2
  exit 1
fi
echo "== no findings"
