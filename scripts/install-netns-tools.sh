#!/usr/bin/env bash
# iproute2 (`ip netns`, veth, bridges) for the multi-host tests (tests/test_netns.py).
# Installs it with apt when missing and possible; otherwise those tests skip with
# the reason (they also need root: CAP_SYS_ADMIN and CAP_NET_ADMIN). Never fails.
set -uo pipefail
if command -v ip >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-netns-tools: installing iproute2 (apt)..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends iproute2 >/dev/null \
    || echo "install-netns-tools: could not install iproute2; the multi-host tests will skip" >&2
else
  echo "install-netns-tools: no iproute2 and cannot install it; the multi-host tests will skip" >&2
fi
exit 0
