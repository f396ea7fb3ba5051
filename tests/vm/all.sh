#!/bin/sh
# Every guest check, in one boot (booting costs more than the checks): run by `cargo xtask vm
# test` inside the bookworm guest, where this tree is at /src and cargo's target at /mnt/target.
here=$(dirname "$0")
SLUICE=${SLUICE:-/mnt/target/debug/sluice}
export SLUICE
fail=0
for check in probe ipvs; do
    echo "=== vm check: $check"
    if sh "$here/$check.sh"; then
        echo "=== vm check: $check passed"
    else
        echo "=== vm check: $check FAILED"
        fail=1
    fi
done
exit $fail
