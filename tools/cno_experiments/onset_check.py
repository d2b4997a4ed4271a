#!/usr/bin/env python3
"""Error against the stimulus onset, beyond the test split's onsets (docs/cno-equivariance.md).

    onset_check.py [--input-sampling cell-average] BIN CHECKPOINT [CHECKPOINT ...]

BIN is the directory of the release examples (target/release/examples). For every onset
t0 in 1, 5, 10, ..., 30 and nine stimuli (centre 0.3, 0.5, 0.7 × amplitude 0.8, 1.2, 1.8),
`fhn_solve` solves the cable on the quick study's 50 × 50 output grid, `infer` runs each
checkpoint on the currents, and the script prints, per checkpoint and onset, the median over
the stimuli of the relative L2 error of v and of w (the study's metric). The test split draws
t0 ~ U[1, 20]; onsets 25 and 30 are later than any it holds. `--input-sampling cell-average`
writes the currents as cell averages, for checkpoints trained on a protocol with
`input_sampling: "cell_average"` (docs/protocol.md). Needs numpy.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

ONSETS = [1, 5, 10, 15, 20, 25, 30]
CENTRES = [0.3, 0.5, 0.7]
AMPLITUDES = [0.8, 1.2, 1.8]
GRID = 50


def rel_l2(pred, truth):
    # Norms on the uniform grid: the spacing cancels in the ratio.
    den = np.linalg.norm(truth)
    return np.linalg.norm(pred - truth) / den if den > 0 else float("nan")


def solve_all(bin_dir, work, sampling):
    stimuli = [(t0, x0, a) for t0 in ONSETS for x0 in CENTRES for a in AMPLITUDES]
    inputs, truths = [], []
    for k, (t0, x0, a) in enumerate(stimuli):
        out = os.path.join(work, f"s{k}")
        subprocess.run([os.path.join(bin_dir, "fhn_solve"), "--x0", str(x0), "--t0", str(t0),
                        "--amplitude", str(a), "--f32", "--output-nt", str(GRID),
                        "--output-nx", str(GRID), "--input-sampling", sampling, "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        inputs.append(np.load(os.path.join(out, "input.npy")))
        truths.append(np.stack([np.load(os.path.join(out, "v.npy")),
                                np.load(os.path.join(out, "w.npy"))]))
    x = np.stack(inputs)[:, None].astype(np.float32)
    return stimuli, x, np.stack(truths)


def main():
    args, sampling = sys.argv[1:], "point"
    if args[:1] == ["--input-sampling"] and len(args) > 1:
        sampling, args = args[1], args[2:]
    if len(args) < 2:
        sys.exit(__doc__)
    bin_dir, checkpoints = args[0], args[1:]
    with tempfile.TemporaryDirectory() as work:
        stimuli, x, truth = solve_all(bin_dir, work, sampling)
        np.save(os.path.join(work, "x.npy"), x)
        print("checkpoint\tt0\tmedian rel L2 v\tmedian rel L2 w")
        for ck in checkpoints:
            pred_path = os.path.join(work, "pred.npy")
            subprocess.run([os.path.join(bin_dir, "infer"), "--checkpoint", ck, "--input",
                            os.path.join(work, "x.npy"), "--out", pred_path], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pred = np.load(pred_path)
            for t0 in ONSETS:
                idx = [k for k, s in enumerate(stimuli) if s[0] == t0]
                ev = np.median([rel_l2(pred[k, 0], truth[k, 0]) for k in idx])
                ew = np.median([rel_l2(pred[k, 1], truth[k, 1]) for k in idx])
                print(f"{ck}\t{t0}\t{100 * ev:.2f}%\t{100 * ew:.2f}%")


if __name__ == "__main__":
    main()
