#!/usr/bin/env bash
# Start `sgdm train` on this node under `accelerate launch`: one machine, or one node of many.
#
#   launch/train.sh CONFIG [OVERRIDES...] [--resume auto]
#
# Environment (what Kubeflow Trainer v2 (TrainJob), the training-operator (PyTorchJob) and the k8s/
# manifests set; the first one set wins):
#   ACCELERATE_CONFIG  configs/accelerate/{ddp,fsdp,zero2,zero3}.yaml   (default: this repo's ddp.yaml)
#   PET_NPROC_PER_NODE | NPROC_PER_NODE   processes on this node, its GPU count   (default: 1)
#   PET_NNODES | NNODES                   number of nodes                         (default: 1)
#   PET_NODE_RANK | NODE_RANK             this node's rank                        (default: 0)
#   PET_MASTER_ADDR | MASTER_ADDR, PET_MASTER_PORT | MASTER_PORT   node 0's rendezvous (127.0.0.1:29500)
#   (WORLD_SIZE and RANK are not read: the PyTorchJob operator sets WORLD_SIZE to the number of
#    processes, pods x nprocPerNode, and RANK to the node rank; Trainer v2 sets neither.)
#   MAX_RESTARTS       relaunch the workers this often after a crash (default: 0); each restart
#                      resumes from the newest complete checkpoint (--resume auto is added for you).
#   PYTHON             the interpreter with sgdm_dist installed (default: found, see below).
#   REGISTER_ALIAS     after training succeeds, node 0 runs `sgdm register CONFIG --alias ALIAS`
#                      (the model this run uploaded to MLflow; launch.register_alias).
#
# Exit codes: 0 done; 2 bad config or data (never restarted: the same on every try); 143 stopped by
# SIGTERM (preempted; a checkpoint was written); 137 killed; 1 crashed after MAX_RESTARTS restarts.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,23p' "$0" >&2
  exit 2
fi

# The interpreter: $PYTHON, else the first of the active venv, a venv next to this script's repo,
# the one beside `sgdm` on PATH, python3, python that can import sgdm_dist.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
find_python() {
  local candidates=() c
  [[ -n "${VIRTUAL_ENV:-}" ]] && candidates+=("$VIRTUAL_ENV/bin/python")
  candidates+=("$repo/.venv/bin/python")
  if command -v sgdm >/dev/null 2>&1; then
    candidates+=("$(dirname "$(command -v sgdm)")/python")
  fi
  candidates+=(python3 python)
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sgdm_dist' >/dev/null 2>&1; then
      echo "$c"
      return 0
    fi
  done
  return 1
}
if [[ -n "${PYTHON:-}" ]]; then
  python="$PYTHON"
elif ! python="$(find_python)"; then
  echo "launch/train.sh: no Python with sgdm_dist installed (tried \$VIRTUAL_ENV, .venv, the one beside sgdm, python3, python); set PYTHON" >&2
  exit 2
fi

config_file="${ACCELERATE_CONFIG:-$repo/configs/accelerate/ddp.yaml}"
nproc="${PET_NPROC_PER_NODE:-${NPROC_PER_NODE:-1}}"
nnodes="${PET_NNODES:-${NNODES:-1}}"
node_rank="${PET_NODE_RANK:-${NODE_RANK:-0}}"
master_addr="${PET_MASTER_ADDR:-${MASTER_ADDR:-127.0.0.1}}"
master_port="${PET_MASTER_PORT:-${MASTER_PORT:-29500}}"
max_restarts="${MAX_RESTARTS:-0}"

if [[ "$nnodes" == *:* ]]; then
  # The operator writes MIN:MAX when an elasticPolicy is set; accelerate launch needs a fixed size.
  if [[ "${nnodes%%:*}" != "${nnodes##*:}" ]]; then
    echo "launch/train.sh: elastic node range '$nnodes' is not supported by accelerate launch; use minReplicas = maxReplicas" >&2
    exit 2
  fi
  nnodes="${nnodes%%:*}"
fi
if [[ "$nproc" == auto ]]; then
  echo "launch/train.sh: PET_NPROC_PER_NODE=auto; set numProcPerNode (sgdm launch k8s does) or NPROC_PER_NODE" >&2
  exit 2
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

# A bad config fails here, once, with exit 2 and one message, before any worker starts.
overrides=()
for arg in "${@:2}"; do
  [[ "$arg" == *=* && "$arg" != -* ]] && overrides+=("$arg")
done
"$python" -m sgdm_dist.cli config check "$1" "${overrides[@]}" >/dev/null || exit 2

extra=()
if (( max_restarts > 0 )) && [[ " $* " != *" --resume "* ]]; then
  extra+=(--resume auto)  # a restarted worker must continue, not start over
fi

# Workers get WORLD_SIZE/RANK/LOCAL_RANK from the launcher, never the pod's.
unset WORLD_SIZE RANK LOCAL_RANK
# sgdm_dist.launch.node is `accelerate launch` keeping the workers' exit codes (2, 143, ...).
launch=("$python" -m sgdm_dist.launch.node
  --config_file "$config_file"
  --num_machines "$nnodes"
  --machine_rank "$node_rank"
  --main_process_ip "$master_addr"
  --main_process_port "$master_port"
  --num_processes "$(( nnodes * nproc ))"
  -m sgdm_dist.cli train "$@" "${extra[@]}")

# The in-cluster register step: node 0, once, after the whole run succeeded.
register_model() {
  if [[ -z "${REGISTER_ALIAS:-}" || "$node_rank" != 0 ]]; then
    return 0
  fi
  echo "launch/train.sh: registering the model with alias $REGISTER_ALIAS" >&2
  "$python" -m sgdm_dist.cli register "$1" "${overrides[@]}" --alias "$REGISTER_ALIAS"
}

if (( max_restarts == 0 )) && [[ -z "${REGISTER_ALIAS:-}" ]]; then
  exec "${launch[@]}"
fi

# Restarts: a fresh launcher per attempt. torchrun's own --max_restarts re-forms the gloo group
# inside one launcher, which was seen to fail intermittently ("connectFullMesh … Connection
# refused"); a new launcher gets a new rendezvous store every time. Every node restarts when any
# fails (its peers' collectives fail too), so the count is per job attempt. A signal to this script
# is passed on and ends the loop (143 = preempted with a checkpoint written: no restart here, the
# operator decides); exit 2 is never retried.
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
  if (( rc == 0 && ! stopping )); then
    register_model "$1"
    exit $?
  fi
  if (( rc == 2 || stopping || attempt >= max_restarts )); then
    exit "$rc"
  fi
  echo "launch/train.sh: training failed with exit code $rc; restart $(( attempt + 1 ))/$max_restarts from the newest checkpoint" >&2
done
