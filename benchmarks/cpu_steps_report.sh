#!/usr/bin/env bash
# One `clion-bench steps` CPU run written up as docs/benchmarks/steps-cpu-<target>-<date>.md,
# with the host facts a reader needs to judge it (CPU model and flags, compiler, load).
#
#   benchmarks/cpu_steps_report.sh x86-64-v3   # the AVX2 build, forced
#   benchmarks/cpu_steps_report.sh native      # the build this host picks
#   REPEATS=21 benchmarks/cpu_steps_report.sh ...   # rounds (default 15)
#
# Then `python benchmarks/readme_steps_tables.py` rewrites README's tables from the reports.
set -euo pipefail
target=${1:?usage: cpu_steps_report.sh x86-64|x86-64-v3|x86-64-v4|native [date]}
day=${2:-$(date -u +%F)}
repeats=${REPEATS:-15}
out=docs/benchmarks/steps-cpu-${target}-${day}.md
optimizers=adamw-foreach,adamw-fused,lion-pytorch-foreach,lion-foreach,lion-fused,clion-global-fused,clion-global-fused-sign,clion-tensor-fused,clion-tensor-fused-sign,clion-element-fused,clion-soft-fused
isa_env=()
if [ "$target" != native ]; then isa_env=(CLION_HF_CPU_ISA="$target"); fi
table=$(mktemp --suffix=.md)
trap 'rm -f "$table"' EXIT
before=$(cat /proc/loadavg)
env "${isa_env[@]}" OMP_WAIT_POLICY=PASSIVE clion-bench steps --models gpt2,bert,vit \
  --repeats "$repeats" --optimizers "$optimizers" --warm-cache --out "$table"
after=$(cat /proc/loadavg)
{
  echo "# clion-bench steps, CPU, kernel target: $target"
  echo
  echo "Command: \`${isa_env[*]:-} OMP_WAIT_POLICY=PASSIVE clion-bench steps --models gpt2,bert,vit --repeats $repeats --optimizers $optimizers --warm-cache\`"
  echo
  echo "Host: $(lscpu | grep -m1 'Model name' | tr -s ' '); $(nproc) CPUs seen by this process"
  echo
  echo "Compiler: $(${CXX:-g++} --version | head -1)"
  echo
  echo "Load average before: \`$before\`; after: \`$after\`"
  echo
  echo "\`lscpu\` flags: \`$(lscpu | sed -n 's/^Flags: *//p')\`"
  echo
  cat "$table"
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
