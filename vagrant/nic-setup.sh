#!/usr/bin/env bash
# nic-setup.sh NIC MTU: one combined channel per vCPU and the data MTU on a virtio-net NIC.
# Neither survives a reboot, and the benchmark may leave the NIC reset, so provision.sh and
# bench.sh both call this.
set -euo pipefail
nic=$1
mtu=$2

# The device has more queue pairs than vCPUs (see QUEUES in the Vagrantfile): the spare ones
# become virtio-net's dedicated XDP TX queues. Never ask for more than the device has.
want=$(nproc)
max=$(ethtool -l "$nic" | awk '/^Pre-set maximums/ { m = 1 } m && /^Combined:/ { print $2; exit }')
if [ -n "$max" ] && [ "$max" != "n/a" ] && [ "$max" -lt "$want" ]; then
  want=$max
fi
current=$(ethtool -l "$nic" | awk '/^Current hardware/ { c = 1 } c && /^Combined:/ { print $2; exit }')
if [ "$current" != "$want" ]; then
  ethtool -L "$nic" combined "$want"
fi
ip link set dev "$nic" mtu "$mtu" up
echo "$nic: $want combined channels (device maximum ${max:-?}), MTU $mtu"
