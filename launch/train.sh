#!/usr/bin/env bash
# Start `sgdm train` on this node under `accelerate launch`: one machine, or one node of many.
#
#   launch/train.sh CONFIG [OVERRIDES...] [--resume auto]
#
# Environment (what the Kubeflow PyTorchJob operator and the k8s/ manifests set):
#   ACCELERATE_CONFIG  configs/accelerate/{ddp,fsdp,zero2,zero3}.yaml   (default: ddp.yaml)
#   NPROC_PER_NODE     processes on this node, normally its GPU count       (default: 1)
#   NNODES | PET_NNODES | WORLD_SIZE   number of nodes (pod-level WORLD_SIZE counts pods)  (default: 1)
#   NODE_RANK | PET_NODE_RANK | RANK   this node's rank (pod-level RANK is the pod index)  (default: 0)
#   MASTER_ADDR, MASTER_PORT           rendezvous of node 0            (default: 127.0.0.1:29500)
#   MAX_RESTARTS       relaunch this node this often after a failure (default: 0); each restart
#                      resumes from the newest complete checkpoint (--resume auto is added for you).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,15p' "$0" >&2
  exit 2
fi

config_file="${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}"
nproc="${NPROC_PER_NODE:-1}"
nnodes="${PET_NNODES:-${NNODES:-${WORLD_SIZE:-1}}}"
node_rank="${PET_NODE_RANK:-${NODE_RANK:-${RANK:-0}}}"
master_addr="${MASTER_ADDR:-127.0.0.1}"
master_port="${MASTER_PORT:-29500}"
max_restarts="${MAX_RESTARTS:-0}"
python="${PYTHON:-python}"

if [[ "$nnodes" == *:* ]]; then
  # The operator writes MIN:MAX when an elasticPolicy is set; accelerate launch needs a fixed size.
  if [[ "${nnodes%%:*}" != "${nnodes##*:}" ]]; then
    echo "launch/train.sh: elastic node range '$nnodes' is not supported by accelerate launch; use minReplicas = maxReplicas" >&2
    exit 2
  fi
  nnodes="${nnodes%%:*}"
fi
for name in nproc nnodes node_rank master_port max_restarts; do
  if ! [[ "${!name}" =~ ^[0-9]+$ ]]; then
    echo "launch/train.sh: $name must be a whole number, got '${!name}'" >&2
    exit 2
  fi
done
if [[ ! -f "$config_file" ]]; then
  echo "launch/train.sh: accelerate config not found: $config_file" >&2
  exit 2
fi

extra=()
if (( max_restarts > 0 )) && [[ " $* " != *" --resume "* ]]; then
  extra+=(--resume auto)  # a restarted worker must continue, not start over
fi

# Pod-level WORLD_SIZE/RANK describe nodes; the workers get their own from the launcher.
unset WORLD_SIZE RANK LOCAL_RANK
launch=("$python" -m accelerate.commands.launch
  --config_file "$config_file"
  --num_machines "$nnodes"
  --machine_rank "$node_rank"
  --main_process_ip "$master_addr"
  --main_process_port "$master_port"
  --num_processes "$(( nnodes * nproc ))"
  -m sgdm_dist.cli train "$@" "${extra[@]}")

if (( max_restarts == 0 )); then
  exec "${launch[@]}"
fi

# Restarts: a fresh `accelerate launch` per attempt. torchrun's own --max_restarts re-forms the gloo
# group inside one launcher, which was seen to fail intermittently ("connectFullMesh … Connection
# refused"); a new launcher gets a new rendezvous store every time. A signal to this script is
# passed on and ends the loop (143 = preempted with a checkpoint written: no restart).
stopping=0
trap 'stopping=1; kill -TERM "$child" 2>/dev/null' TERM INT
for (( attempt = 0; ; attempt++ )); do
  "${launch[@]}" &
  child=$!
  rc=0
  wait "$child" || rc=$?
  while (( stopping )) && kill -0 "$child" 2>/dev/null; do
    rc=0
    wait "$child" || rc=$?
  done
  if (( rc == 0 || stopping || attempt >= max_restarts )); then
    exit "$rc"
  fi
  echo "launch/train.sh: training failed with exit code $rc; restart $(( attempt + 1 ))/$max_restarts from the newest checkpoint" >&2
done
