#!/usr/bin/env bash
# One `clion-bench steps` CPU run written up as a report under docs/benchmarks/, with the
# host facts a reader needs to judge it (CPU model and flags, compiler, load).
#
#   benchmarks/cpu_steps_report.sh x86-64-v3   # GPT-2/BERT/ViT, the AVX2 build, forced
#   benchmarks/cpu_steps_report.sh native      # GPT-2/BERT/ViT, the build this host picks
#   benchmarks/cpu_steps_report.sh isa         # ns/element per instruction set, 1 thread
#   benchmarks/cpu_steps_report.sh offload     # the 1B-shaped step (the CPU-offload case)
#   REPEATS=21 benchmarks/cpu_steps_report.sh ...   # rounds (default 15)
#
# Then `python -m clion_hf.bench.steps_readme` rewrites README's tables from the reports.
set -euo pipefail
target=${1:?usage: cpu_steps_report.sh x86-64|x86-64-v3|x86-64-v4|native|isa|offload [date]}
day=${2:-$(date -u +%F)}
repeats=${REPEATS:-15}
optimizers=adamw-foreach,adamw-fused,lion-pytorch-foreach,lion-foreach,lion-fused,clion-global-fused,clion-global-fused-sign,clion-tensor-fused,clion-tensor-fused-sign,clion-element-fused,clion-soft-fused
isa_env=()
case "$target" in
  isa)
    title="clion-bench steps --isa: the fused kernel per instruction set, one thread"
    out=docs/benchmarks/steps-cpu-isa-${day}.md
    args=(--isa --models gpt2 --repeats "$repeats" --threads 1 --warm_cache) ;;
  offload)
    title="clion-bench steps, CPU, a 1B-shaped step (the CPU-offload case): Llama-3.2-1B's shapes with 1 of its 16 decoder layers, 323M parameters"
    out=docs/benchmarks/steps-cpu-offload-1b-shaped-${day}.md
    args=(--models llama1b-1layer --repeats "$repeats" --optimizers adamw-fused,lion-fused,clion-element-fused,clion-soft-fused --warm_cache) ;;
  *)
    title="clion-bench steps, CPU, kernel target: $target"
    out=docs/benchmarks/steps-cpu-${target}-${day}.md
    args=(--models gpt2,bert,vit --repeats "$repeats" --optimizers "$optimizers" --warm_cache)
    if [ "$target" != native ]; then isa_env=(CLION_HF_CPU_ISA="$target"); fi ;;
esac
table=$(mktemp --suffix=.md)
trap 'rm -f "$table" "${table%.md}.csv"' EXIT
before=$(cat /proc/loadavg)
env "${isa_env[@]}" OMP_WAIT_POLICY=PASSIVE clion-bench steps "${args[@]}" --out "$table"
after=$(cat /proc/loadavg)
{
  echo "# $title"
  echo
  echo "Command: \`${isa_env[*]:-} OMP_WAIT_POLICY=PASSIVE clion-bench steps ${args[*]}\`"
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
# the table as CSV, with the run's facts: what steps_readme reads
mv "${table%.md}.csv" "${out%.md}.csv"
echo "wrote $out and ${out%.md}.csv"
