#!/usr/bin/env bash
# The study as a Slurm job array: array task k (1..N) runs shard k-1 of N of the study's
# job list; a last job, started when the array has finished, merges the parts.
#
#   STUDY=default N=16 sbatch --array=1-16 examples/cluster/slurm_array.sh
#   sbatch --dependency=afterok:<array job id> --wrap \
#       "target/release/examples/benchmark --merge results-default --out results-default"
#
# Every task writes into the same --out directory on the shared file system: the first
# writes study.json, the others check they run the same study. A preempted or requeued
# task (Slurm sends SIGTERM) resumes its unfinished job from its last checkpointed epoch
# and skips the jobs it had finished. Use the same STUDY and flags in every task.
#
# Settings (environment):
#   STUDY      quick | default | a study JSON file               (default: default)
#   N          number of array tasks = shards                    (default: SLURM_ARRAY_TASK_COUNT)
#   OUT        the shared output directory                       (default: results-$STUDY)
#   BENCHMARK  the benchmark binary (build it once: cargo build --release --example benchmark)
#   EXTRA      further flags for every task, e.g. "--seeds 3" or "--device cuda"
#
#SBATCH --job-name=fhn-study
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
set -euo pipefail

STUDY=${STUDY:-default}
N=${N:-${SLURM_ARRAY_TASK_COUNT:?set N or run as a job array}}
TASK=${SLURM_ARRAY_TASK_ID:?run as a job array (sbatch --array=1-N)}
OUT=${OUT:-results-$(basename "$STUDY" .json)}
BENCHMARK=${BENCHMARK:-target/release/examples/benchmark}

if (( TASK < 1 || TASK > N )); then
    echo "array task $TASK outside 1..$N: use sbatch --array=1-$N" >&2
    exit 2
fi
# Slurm numbers the tasks from 1; shards are numbered from 0.
SHARD=$(( TASK - 1 ))/$N
# One job at a time per task, with the threads Slurm gave it.
export RAYON_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${RAYON_NUM_THREADS:-1}}
# shellcheck disable=SC2086
exec "$BENCHMARK" --protocol "$STUDY" --out "$OUT" --shard "$SHARD" ${EXTRA:-}
