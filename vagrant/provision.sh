#!/usr/bin/env bash
# Provisions a benchmark VM (node or load) as root: packages, Rust, a release build of the
# synced repository in /podlane, the binaries in /usr/local/bin, the data NIC's queues and MTU,
# and root SSH from node to load. The Vagrantfile passes everything through the environment;
# running it again is harmless (a second `vagrant provision` rebuilds and reinstalls).
set -euo pipefail

: "${PODLANE_ROLE:?}" "${PODLANE_DATA_IP:?}" "${PODLANE_DATA_MTU:?}" "${PODLANE_LOAD_CONTROL_IP:?}"
: "${PODLANE_SSH_PUBLIC_B64:?the Vagrantfile makes the key on up/provision/reload}"

# Explicit, so that rustup and cargo use root's home however sudo was called (by hand, -E).
export HOME=/root
export DEBIAN_FRONTEND=noninteractive
MIN_RUST=1.85 # the workspace's rust-version

echo "== packages"
apt-get update -qq
apt-get install -y -qq build-essential ca-certificates curl iproute2 iputils-ping procps \
  ethtool openssh-client >/dev/null

echo "== Rust"
export PATH="/root/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
    sh -s -- -y -q --profile minimal --default-toolchain stable
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n' "$MIN_RUST" "$have" | sort -V | head -n1)" != "$MIN_RUST" ]; then
  if command -v rustup >/dev/null 2>&1; then
    rustup -q update stable && rustup -q default stable
  else
    echo "provision: rustc $have is older than $MIN_RUST and not managed by rustup" >&2
    exit 1
  fi
fi
rustc --version

echo "== build (cargo build --release --locked in /podlane)"
cd /podlane
cargo build --release --locked
install -m 0755 target/release/podlane target/release/podlane-dataplane \
  target/release/podlane-bench /usr/local/bin/

echo "== data NIC"
# Found by the address Vagrant gave it: NIC names depend on the box and on PCI order.
data_nic=$(ip -o -4 addr show | awk -v ip="$PODLANE_DATA_IP" \
  '{ split($4, a, "/"); if (a[1] == ip) { print $2; exit } }')
if [ -z "$data_nic" ]; then
  echo "provision: no interface has $PODLANE_DATA_IP; the data network did not come up" >&2
  exit 1
fi
mkdir -p /etc/podlane
# bench.sh reads this: after a run the NIC may have lost its address (moving a NIC between
# namespaces drops it), so the name is recorded while the address still finds it.
cat >/etc/podlane/vagrant.env <<EOF
PODLANE_ROLE=$PODLANE_ROLE
PODLANE_DATA_NIC=$data_nic
PODLANE_DATA_IP=$PODLANE_DATA_IP
PODLANE_DATA_MTU=$PODLANE_DATA_MTU
PODLANE_LOAD_CONTROL_IP=$PODLANE_LOAD_CONTROL_IP
EOF
/podlane/vagrant/nic-setup.sh "$data_nic" "$PODLANE_DATA_MTU"

echo "== SSH ($PODLANE_ROLE)"
install -d -m 0700 /root/.ssh
public=$(printf '%s' "$PODLANE_SSH_PUBLIC_B64" | base64 -d)
case "$PODLANE_ROLE" in
  load)
    touch /root/.ssh/authorized_keys
    chmod 0600 /root/.ssh/authorized_keys
    grep -qxF "$public" /root/.ssh/authorized_keys || printf '%s\n' "$public" >>/root/.ssh/authorized_keys
    ;;
  node)
    : "${PODLANE_SSH_PRIVATE_B64:?node needs the private key}"
    (umask 077 && printf '%s' "$PODLANE_SSH_PRIVATE_B64" | base64 -d >/root/.ssh/podlane_bench)
    printf '%s\n' "$public" >/root/.ssh/podlane_bench.pub
    # A drop-in rather than an edit of root's own ssh config; accept-new because load's host
    # key is new on every `vagrant up`, yet a changed key for a known one still stops us.
    cat >/etc/ssh/ssh_config.d/podlane-bench.conf <<EOF
Host $PODLANE_LOAD_CONTROL_IP
    User root
    IdentityFile /root/.ssh/podlane_bench
    IdentitiesOnly yes
    StrictHostKeyChecking accept-new
    BatchMode yes
EOF
    # A re-created load VM has a new host key; forget the old one.
    ssh-keygen -q -R "$PODLANE_LOAD_CONTROL_IP" >/dev/null 2>&1 || true
    ;;
  *)
    echo "provision: unknown role $PODLANE_ROLE" >&2
    exit 1
    ;;
esac

echo "== done: $PODLANE_ROLE, data NIC $data_nic ($PODLANE_DATA_IP)"
