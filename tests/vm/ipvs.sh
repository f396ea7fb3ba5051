#!/bin/sh
# IPVS with real packets: tests/testbed's star topology in network namespaces (client 10.0.1.2
# - node 10.0.1.1 - backend i at 10.0.{10+i}.2), `sluice run --dataplane ipvs` in the node
# namespace with examples/manifests (web: 10.96.0.10:80 -> backends :8080), and connections
# from the client to the ClusterIP, which must reach every backend.
set -u
SLUICE=${SLUICE:-/mnt/target/debug/sluice}
here=$(dirname "$0")
VIP=10.96.0.10
N=3
REQUESTS=${REQUESTS:-60}

ns() { ip netns exec "$@"; }
set -e
ip netns add client
ip netns add node
ns node sysctl -qw net.ipv4.ip_forward=1
ns node sysctl -qw net.ipv4.conf.all.rp_filter=0
ns node sysctl -qw net.ipv4.conf.default.rp_filter=0
# IPVS drops new connections to a real server whose entry still lingers otherwise; kube-proxy
# sets the same.
ns node sysctl -qw net.ipv4.vs.conntrack=1 2>/dev/null || true
ip link add c0 netns client type veth peer name n-client netns node
ns client ip addr add 10.0.1.2/24 dev c0
ns client ip link set c0 up
ns client ip link set lo up
ns client ip route add default via 10.0.1.1
ns node ip addr add 10.0.1.1/24 dev n-client
ns node ip link set n-client up
ns node ip link set lo up
ifaces="-i n-client"
i=0
while [ $i -lt $N ]; do
    net=10.0.$((10 + i))
    ip netns add b$i
    ip link add e0 netns b$i type veth peer name n-b$i netns node
    ns b$i ip addr add $net.2/24 dev e0
    ns b$i ip link set e0 up
    ns b$i ip link set lo up
    ns b$i ip route add default via $net.1
    ns node ip addr add $net.1/24 dev n-b$i
    ns node ip link set n-b$i up
    ns node sysctl -qw net.ipv4.conf.n-b$i.rp_filter=0
    ns b$i python3 "$here/tcp.py" serve backend-$i 8080 &
    ifaces="$ifaces -i n-b$i"
    i=$((i + 1))
done
set +e

ns node "$SLUICE" run --dataplane ipvs --manifests /src/examples/manifests $ifaces \
    >/tmp/sluice.log 2>&1 &
sluice=$!

fail=0
ready=0
for _ in $(seq 1 60); do
    if [ "$(ns node ipvsadm -Ln -t $VIP:80 2>/dev/null | grep -c -- '->.*:8080')" -eq $N ]; then
        ready=1
        break
    fi
    sleep 0.5
done
echo "--- ipvsadm -Ln (node)"
ns node ipvsadm -Ln
if [ $ready -ne 1 ]; then
    echo "FAIL: IPVS never listed $N real servers for $VIP:80"
    fail=1
fi

echo "--- $REQUESTS connections from the client to $VIP:80"
out=$(ns client python3 "$here/tcp.py" spread $VIP 80 "$REQUESTS" 2>&1)
code=$?
echo "$out"
if [ $code -ne 0 ]; then
    echo "FAIL: connections from the client to $VIP:80 failed"
    fail=1
else
    i=0
    while [ $i -lt $N ]; do
        count=$(echo "$out" | awk -v b=backend-$i '$1 == b { print $2 }')
        if [ -z "$count" ] || [ "$count" -eq 0 ]; then
            echo "FAIL: backend-$i got no connection"
            fail=1
        fi
        i=$((i + 1))
    done
fi

kill $sluice 2>/dev/null
wait $sluice 2>/dev/null
if [ $fail -ne 0 ]; then
    echo "--- sluice log"
    cat /tmp/sluice.log
    echo "--- iptables-save (node)"
    ns node iptables-save
fi
[ $fail -eq 0 ] && echo "ok: $REQUESTS connections to $VIP:80 spread over $N backends, replies from the VIP"
exit $fail
