#!/usr/bin/env bash
# Train a recipe on this machine's GPUs (or CPUs) through accelerate.
#   launch/train.sh RECIPE [key.sub=value ...]
# Environment:
#   NPROC     processes on this node (default: number of visible GPUs, or 1 on CPU)
#   NNODES    number of nodes (default 1); NODE_RANK, MASTER_ADDR, MASTER_PORT for multi-node
#   SHARDING  'fsdp' launches with launch/fsdp_node.yaml (or fsdp_multinode.yaml): FSDP2, parameters,
#             gradients and optimizer state sharded over the processes (docs/scale.md); default: DDP
#             (a recipe with train.sharding: fsdp shards under either)
#   RESUME    'latest' (default) resumes from the run's newest checkpoint if there is one
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
recipe="$1"; shift
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
nproc="${NPROC:-$(( gpus > 0 ? gpus : 1 ))}"
nnodes="${NNODES:-1}"
case "${SHARDING:-ddp}" in
  fsdp) config="$here/fsdp_node.yaml"; [ "$nnodes" -gt 1 ] && config="$here/fsdp_multinode.yaml" ;;
  ddp)
    if [ "$gpus" -eq 0 ]; then
      config="$here/cpu_2proc.yaml"; [ "$nproc" -eq 1 ] && config="$here/cpu_1proc.yaml"
    elif [ "$nnodes" -gt 1 ]; then
      config="$here/multinode.yaml"
    elif [ "$nproc" -gt 1 ]; then
      config="$here/gpu_node.yaml"
    else
      config="$here/gpu_1.yaml"
    fi ;;
  *) echo "launch/train.sh: error: SHARDING must be 'ddp' or 'fsdp', got '${SHARDING}'" >&2; exit 2 ;;
esac
exec accelerate launch --config_file "$config" \
  --num_processes $(( nproc * nnodes )) --num_machines "$nnodes" --machine_rank "${NODE_RANK:-0}" \
  --main_process_ip "${MASTER_ADDR:-127.0.0.1}" --main_process_port "${MASTER_PORT:-29500}" \
  -m mmembed train "$recipe" "$@" --resume "${RESUME:-latest}"
