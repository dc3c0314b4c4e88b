#!/usr/bin/env bash
# The packet-rate benchmark across the two VMs, run on node as root:
#   vagrant ssh node -c "sudo /podlane/vagrant/bench.sh [podlane-bench pps options]"
# node's data NIC is the uplink of the benchmark's node namespace; the far end (generator for
# decap, sink for encap) runs on load through SSH over the control network.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: run as root: vagrant ssh node -c \"sudo /podlane/vagrant/bench.sh\"" >&2
  exit 1
fi
if [ ! -r /etc/podlane/vagrant.env ]; then
  echo "bench.sh: /etc/podlane/vagrant.env is missing; provision first (vagrant provision)" >&2
  exit 1
fi
# shellcheck source=/dev/null
. /etc/podlane/vagrant.env
if [ "$PODLANE_ROLE" != node ]; then
  echo "bench.sh: this is the $PODLANE_ROLE VM; run it on node" >&2
  exit 1
fi
if ! ip link show dev "$PODLANE_DATA_NIC" >/dev/null 2>&1; then
  echo "bench.sh: $PODLANE_DATA_NIC is not in the root namespace (left in a benchmark" \
    "namespace?); 'vagrant reload node' brings it back" >&2
  exit 1
fi
/podlane/vagrant/nic-setup.sh "$PODLANE_DATA_NIC" "$PODLANE_DATA_MTU"

remote="root@$PODLANE_LOAD_CONTROL_IP"
# One round trip checks the key, that load is provisioned, and names load's data NIC (the
# harness's far end runs on it).
if ! load_nic=$(ssh "$remote" \
  'command -v podlane-bench >/dev/null && . /etc/podlane/vagrant.env && echo "$PODLANE_DATA_NIC"'); then
  echo "bench.sh: cannot run podlane-bench on load through 'ssh $remote';" \
    "is load up and provisioned? (vagrant up load)" >&2
  exit 1
fi
echo "node uplink $PODLANE_DATA_NIC; far end: $remote, data NIC $load_nic"

results=/podlane/vagrant/results
mkdir -p "$results"
# The far end uses the interface of the uplink's name unless told otherwise; both VMs come
# from one box, so the names normally match.
far=()
if [ "$load_nic" != "$PODLANE_DATA_NIC" ]; then
  far=(--remote-interface "$load_nic")
fi
podlane-bench pps --uplink "$PODLANE_DATA_NIC" --remote "$remote" "${far[@]}" \
  --json "$results/vm.json" --svg "$results/vm.svg" "$@"

cat <<EOF

Results are in node:$results (vm.json, vm.svg). To copy them to the host, from vagrant/:
  mkdir -p results && vagrant ssh-config node > .ssh/node.config
  scp -F .ssh/node.config node:$results/vm.json node:$results/vm.svg results/
or one file at a time (--no-tty, or the terminal turns line ends into CRLF):
  vagrant ssh node --no-tty -c 'cat $results/vm.json' > results/vm.json
EOF
