"""The study on a Ray cluster: one Ray task per shard of the study's job list, each
calling the same benchmark binary, then one merge.

    python examples/cluster/ray_study.py --study default --shards 16 --out results-default

Every node must see the binary (build it once: cargo build --release --example benchmark)
and the output directory (a shared file system). A task that fails or is preempted is
retried by Ray; the binary resumes its unfinished job from the last checkpointed epoch
and skips the jobs it had finished. Without a cluster, `ray.init()` starts a local one,
which is how this script was tested.
"""

import argparse
import os
import subprocess

import ray


@ray.remote(max_retries=3)
def run_shard(binary, study, out, shard, shards, threads, extra):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [binary, "--protocol", study, "--out", out,
           "--shard", f"{shard}/{shards}", "--quiet", *extra]
    subprocess.run(cmd, check=True, env=env)
    return shard


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="default")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--binary", default="target/release/examples/benchmark")
    p.add_argument("--threads", type=int, default=1, help="threads (and Ray CPUs) per task")
    p.add_argument("--address", default=None, help="a running cluster (default: start a local one)")
    p.add_argument("extra", nargs="*", help="further benchmark flags, after --")
    a = p.parse_args()
    binary = os.path.abspath(a.binary)
    ray.init(address=a.address)
    task = run_shard.options(num_cpus=a.threads)
    done = ray.get([task.remote(binary, a.study, a.out, i, a.shards, a.threads, a.extra)
                    for i in range(a.shards)])
    print(f"{len(done)} shards done; merging")
    subprocess.run([binary, "--merge", a.out, "--out", a.out], check=True)


if __name__ == "__main__":
    main()
