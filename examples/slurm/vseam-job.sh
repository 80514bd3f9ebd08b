# Sourced by the sbatch scripts here: run `vseam run` under torchrun so that a job that hits its
# time limit is recorded as interrupted, requeued, and resumed where it stopped.
#
#   vseam_job SPEC [--set FIELD=VALUE ...]
#
# First start: `vseam run SPEC ... --run-id-file $STATE/<job>.run` records the run's id.
# After a requeue (same job id, the id file exists): `vseam run --resume <id>` continues it —
# finished stages and search layers are kept, the rest is computed by all ranks again.
#
# The time limit: `#SBATCH --signal=B:TERM@300` has Slurm send SIGTERM to this batch shell
# 5 minutes before the limit; the trap forwards it to torchrun, which passes it to the ranks;
# rank 0 records the run as `interrupted` and they exit. Then the job requeues itself.
#
# Environment: VSEAM_DB (the shared registry; PostgreSQL when several jobs write at once),
# STATE (folder for the id files; default ./slurm-state), GPUS_PER_NODE (default: all visible),
# VSEAM_DIST_TIMEOUT (seconds a rank waits for the others before the run fails; default 1800),
# LAUNCH (default `srun`; empty runs torchrun directly, e.g. to try the script without Slurm).

vseam_job() {
  local spec=$1; shift
  local job=${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}
  job=${job:-${SLURM_JOB_ID:-local}}
  local state=${STATE:-$PWD/slurm-state}
  local id_file=$state/$job.run
  mkdir -p "$state"

  local args
  if [ -s "$id_file" ]; then
    # A requeued job: the previous attempt is over (Slurm ended it), so --force takes over a run
    # that was killed too hard to record its end and still reads `running`.
    args=(run --resume "$(cat "$id_file")" --force)
    echo "vseam-job: resuming run $(cat "$id_file") (restart ${SLURM_RESTART_COUNT:-0})"
  else
    args=(run "$spec" "$@" --run-id-file "$id_file")
  fi

  local gpus=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
  [ "$gpus" -ge 1 ] 2>/dev/null || gpus=1
  local nodes=${SLURM_NNODES:-1}
  local head
  head=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n 1 || true)
  head=${head:-localhost}

  # One torchrun per node (srun starts them); the c10d rendezvous on the first node joins them.
  ${LAUNCH-srun} python -m torch.distributed.run \
    --nnodes="$nodes" --nproc-per-node="$gpus" \
    --rdzv-backend=c10d --rdzv-endpoint="$head:${MASTER_PORT:-29500}" --rdzv-id="$job" \
    -m vseam_run "${args[@]}" &
  local pid=$!
  local stopped=0
  trap 'stopped=1; kill -TERM "$pid" 2>/dev/null' TERM
  local rc=0
  wait "$pid" || rc=$?
  if [ "$stopped" -eq 1 ]; then
    wait "$pid" 2>/dev/null || true  # the first wait returns when the trap runs; let the ranks finish recording
    if [ -n "${SLURM_JOB_ID:-}" ]; then
      echo "vseam-job: time limit reached; requeueing job $SLURM_JOB_ID to resume"
      scontrol requeue "$SLURM_JOB_ID"
    fi
    return 0
  fi
  return "$rc"
}
