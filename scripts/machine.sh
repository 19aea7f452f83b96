#!/usr/bin/env bash
# Prints one line naming the CPU this machine runs on, for the header of a
# bench report. `model name` alone is not enough on cloud machines: it can
# read "AMD EPYC" for CPUs several generations apart (family 23 is Zen 1/2,
# family 26 Zen 5), so the family, model, clock, last-level cache and core
# count are printed too.
set -euo pipefail
field() { grep -m1 "^$1[[:space:]]*:" /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'; }
l3="$(lscpu 2>/dev/null | sed -n 's/^L3 cache: *//p' | head -1)"
virt=""
grep -q -m1 '^flags.* hypervisor' /proc/cpuinfo && virt=", virtual machine"
echo "$(field 'model name') (family $(field 'cpu family'), model $(field model), $(field 'cpu MHz' | cut -d. -f1) MHz${l3:+, L3 $l3}), $(nproc) cores$virt"
