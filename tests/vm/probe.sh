#!/bin/sh
# On Debian's 6.1 kernel the probe must rule out the eBPF dataplane (no TCX; Sluice needs TCX
# and bpf_fib_lookup's BPF_FIB_LOOKUP_SRC, both from 6.8), find IPVS available, and let `auto`
# pick the first available fallback in probe::decide's order (nftables, then IPVS).
set -u
SLUICE=${SLUICE:-/mnt/target/debug/sluice}
out=$("$SLUICE" probe 2>&1)
code=$?
echo "$out"
fail=0
expect() {
    if echo "$out" | grep -Eq "$1"; then
        echo "ok: $2"
    else
        echo "FAIL: $2 (no line matching /$1/)"
        fail=1
    fi
}
[ $code -eq 0 ] || { echo "FAIL: sluice probe exited $code"; fail=1; }
expect '^kernel 6\.1\.' "the guest runs a 6.1 kernel"
expect 'attach:tcx +required +MISSING' "TCX is reported missing"
expect '^dataplane: nftables \(auto: falling back' "auto falls back to nftables, not eBPF"
expect 'fallback ipvs +available' "IPVS is available"
out=$("$SLUICE" probe --dataplane ipvs 2>&1)
echo "$out" | tail -1
expect '^dataplane: ipvs' "forcing ipvs is accepted"
exit $fail
