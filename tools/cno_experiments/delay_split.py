#!/usr/bin/env python3
"""Splits a trained model's E(delay) into the rows before the delay and the rows after it.

    python tools/cno_experiments/delay_split.py DATA CHECKPOINT [CHECKPOINT ...]

DATA is a generate_dataset output written with --npy (the study's protocol:
`make_studies.py protocol`), CHECKPOINT a run's models/<label>/last.safetensors. Needs numpy
and the release `infer` example (path from $INFER, default target/release/examples/infer).

For a delay of k steps, E(delay) (crates/no-eval/src/translation.rs) compares M(S I) with
S M(I) on every row; S M(I) is the rest state (0) on the first k rows. So
E² = E_pre² + E_post² with E_pre = ‖M(S I)[:k]‖ / ‖S M(I)‖ (what the model answers before
the delayed stimulus, where the truth is rest) and E_post the error on the rows where the
shifted response lies. Printed per checkpoint: the mean over the 8 equivariance samples
(first validation samples with x0 in [0.3, 0.7], as the study) of E, E_pre and E_post of v,
at the study's delay of 10 time units (12 steps on the 50 x 50 grid).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

EPS = 1e-8


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data = sys.argv[1]
    infer = os.environ.get("INFER", "target/release/examples/infer")
    x = np.load(f"{data}/val/input.npy").astype(np.float32)[:, None]
    x0 = np.load(f"{data}/val/x0.npy")
    with open(f"{data}/protocol.json") as f:
        protocol = json.load(f)
    nt = x.shape[2]
    k = round(10.0 / (protocol["output"]["t_end"] / (nt - 1)))
    eq = [i for i, c in enumerate(x0) if 0.3 <= c <= 0.7][:8]
    base_in = x[eq]
    delayed_in = np.zeros_like(base_in)
    delayed_in[:, :, k:] = base_in[:, :, :nt - k]
    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/base.npy", base_in)
        np.save(f"{tmp}/delayed.npy", delayed_in)
        for ckpt in sys.argv[2:]:
            outs = {}
            for name in ["base", "delayed"]:
                subprocess.run([infer, "--checkpoint", ckpt, "--input", f"{tmp}/{name}.npy",
                                "--out", f"{tmp}/{name}.out.npy"], check=True, capture_output=True)
                outs[name] = np.load(f"{tmp}/{name}.out.npy")[:, 0].astype(np.float64)
            ref = np.zeros_like(outs["base"])
            ref[:, k:] = outs["base"][:, :nt - k]
            m = outs["delayed"]
            den = np.sqrt((ref ** 2).sum(axis=(1, 2))) + EPS
            pre = np.sqrt((m[:, :k] ** 2).sum(axis=(1, 2))) / den
            post = np.sqrt(((m[:, k:] - ref[:, k:]) ** 2).sum(axis=(1, 2))) / den
            full = np.sqrt(pre ** 2 + post ** 2)
            print(json.dumps({"checkpoint": ckpt, "delay_steps": k, "e_delay_v": full.mean(),
                              "e_pre_v": pre.mean(), "e_post_v": post.mean()}))


if __name__ == "__main__":
    main()
