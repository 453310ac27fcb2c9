#!/bin/sh
# Runs as root inside the stemcell's root filesystem (chroot, script on stdin) after the
# packages of packages.list are installed and before the agent is copied in.
set -eu

# The user jobs run as, with its own group, as on BOSH stemcells (uid 1000). No password
# (the account is locked) and no sudo: operators reach VMs through the agent.
if ! id vcap >/dev/null 2>&1; then
    useradd --uid 1000 --user-group --create-home --home-dir /home/vcap --shell /bin/bash vcap
fi

# BOSH's directory layout. The agent (root) installs jobs and packages and creates a
# directory per job below data, store and sys/{log,run}, owned by the job's user.
install -d -m 0755 -o root -g root \
    /var/vcap /var/vcap/bosh /var/vcap/bosh/bin /var/vcap/bosh/log \
    /var/vcap/jobs /var/vcap/packages
install -d -m 0750 -o root -g vcap /var/vcap/data /var/vcap/store /var/vcap/sys
install -d -m 0770 -o root -g vcap /var/vcap/sys/log /var/vcap/sys/run

# Nothing of the build stays in the image: package caches and lists, old dpkg and debconf
# copies, logs, temporary files.
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
rm -f /var/lib/dpkg/*-old /var/cache/debconf/*-old
find /var/log -type f -exec truncate -s 0 {} +
find /tmp /var/tmp -mindepth 1 -delete

# Nothing of the build host either. Each VM gets its own machine id, and its host name and
# resolvers come from the CPI (docker sets them) or from the agent's settings.
if [ -e /etc/machine-id ]; then : > /etc/machine-id; fi
rm -f /var/lib/dbus/machine-id
echo localhost > /etc/hostname
cat > /etc/hosts <<'HOSTS'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
HOSTS
: > /etc/resolv.conf
