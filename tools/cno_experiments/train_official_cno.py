#!/usr/bin/env python3
"""Trains the OFFICIAL simplified 2D CNO on this project's FHN data and reports the four
figures of docs/cno-equivariance.md: validation and translated-test error, E(delay) and
E(space) of v.

The official code is not part of this repository. Put it in a scratch directory:

    git clone https://github.com/camlab-ethz/ConvolutionalNeuralOperator /tmp/cno-src

and the data in another (the quick study's data, 50 x 50 output grid):

    python tools/cno_experiments/make_studies.py protocol OUT/protocol.json
    cargo run --release --example generate_dataset -- --protocol OUT/protocol.json --out DATA

then

    python tools/cno_experiments/train_official_cno.py \
        --cno-src /tmp/cno-src/CNO2d_simplified --data DATA --seed 0

Same budget as the study's `cno` row (docs/benchmark.md): the quick config (2 levels, 1
residual block per level and in the neck, channel multiplier 8, lift/project width 16 --
the official `LiftProjectBlock` hard-wires 64, so its default argument is overridden
here, without touching its code), 35 epochs at batch 8, AdamW (lr 3e-3, weight decay
1e-4) with a cosine decay to 1% of lr per epoch, the pooled relative L2 loss (per
channel over the batch, averaged over channels) on Gaussian-normalised inputs and
outputs (per-channel mean and std of the training split), the last epoch's weights.

The figures follow crates/no-eval: relative L2 per sample, median over samples
(validation: the medians of v and w averaged; test: v); E(s) = ||M(S I) - S M(I)||_W / (||S M(I)||_W + eps)
of v in physical units, inputs shifted with zero fill, on the first 8 validation samples
whose pulse centre x0 lies in [0.3, 0.7], at a delay of 10 time units and a space shift
of 0.1 (rounded to output steps); mean over those samples (as the study's table). Also reported: the distance
of the prediction on a zero input from the rest state (v = w = 0), as max |v| and max |w|.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch
from safetensors.numpy import load_file
from safetensors import safe_open

EPS = 1e-8


def load_split(path):
    t = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    x = t["input"][:, None].astype(np.float32)
    y = np.stack([t["v"], t["w"]], axis=1).astype(np.float32)
    protocol = json.loads(meta["protocol"])
    return x, y, t["x0"], protocol


def rel_l2(p, y):
    """Per sample and channel: ||p - y|| / (||y|| + eps) over the grid."""
    num = np.sqrt(((p - y) ** 2).sum(axis=(2, 3)))
    den = np.sqrt((y ** 2).sum(axis=(2, 3)))
    return num / (den + EPS)


def shift(a, st, sx):
    """crates/no-eval translation::shift_batch with zero fill."""
    out = np.zeros_like(a)
    nt, nx = a.shape[2:]
    def span(k, n):
        m = abs(k)
        return (m, n, 0) if k >= 0 else (0, n - m, m)
    t0, t1, ts = span(st, nt)
    x0, x1, xs = span(sx, nx)
    out[:, :, t0:t1, x0:x1] = a[:, :, ts:ts + t1 - t0, xs:xs + x1 - x0]
    return out


def equivariance(apply, x, st, sx):
    base = apply(x)
    shifted = apply(shift(x, st, sx))
    ref = shift(base, st, sx)
    nt, nx = x.shape[2:]
    tw = slice(0, nt) if st >= 0 else slice(0, nt - abs(st))
    xw = slice(abs(sx), nx) if sx >= 0 else slice(0, nx - abs(sx))
    r, m = ref[:, :, tw, xw], shifted[:, :, tw, xw]
    num = np.sqrt(((m - r) ** 2).sum(axis=(2, 3)))
    den = np.sqrt((r ** 2).sum(axis=(2, 3)))
    return num / (den + EPS)  # [B, C]


def pooled_rel_l2(p, y):
    num = torch.sqrt(((p - y) ** 2).sum(dim=(0, 2, 3)))
    den = torch.sqrt((y ** 2).sum(dim=(0, 2, 3)))
    return (num / (den + EPS)).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cno-src", required=True, help="directory holding the official CNO2d.py")
    ap.add_argument("--data", required=True, help="generate_dataset output (train/val/test.safetensors)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=35)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--n-res", type=int, default=1)
    ap.add_argument("--n-res-neck", type=int, default=1)
    ap.add_argument("--channel-multiplier", type=int, default=8)
    ap.add_argument("--latent", type=int, default=16, help="lift/project width (official: 64)")
    ap.add_argument("--use-bn", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    sys.path.insert(0, args.cno_src)
    import CNO2d as official  # noqa: E402  (the official simplified 2D CNO)
    official.LiftProjectBlock.__init__.__defaults__ = (args.latent,)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    xtr, ytr, _, protocol = load_split(f"{args.data}/train.safetensors")
    xva, yva, x0va, _ = load_split(f"{args.data}/val.safetensors")
    xte, yte, _, _ = load_split(f"{args.data}/test.safetensors")
    nt, nx = xtr.shape[2:]
    if nt != nx:
        sys.exit(f"the official CNO needs a square grid, got {nt} x {nx}")
    out_grid = protocol["output"]
    dt = out_grid["t_end"] / (nt - 1)
    dx = out_grid["length"] / (nx - 1)

    stats = lambda a: (a.mean(axis=(0, 2, 3), keepdims=True), a.std(axis=(0, 2, 3), keepdims=True))
    (mx, sxd), (my, syd) = stats(xtr), stats(ytr)
    model = official.CNO2d(in_dim=1, out_dim=2, size=nt, N_layers=args.n_layers, N_res=args.n_res,
                           N_res_neck=args.n_res_neck, channel_multiplier=args.channel_multiplier,
                           use_bn=args.use_bn)
    n_params = sum(p.numel() for p in model.parameters())

    def apply(x):
        model.eval()
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), 16):
                z = torch.from_numpy((x[i:i + 16] - mx) / sxd)
                outs.append(model(z).numpy() * syd + my)
        return np.concatenate(outs)

    zero_at_init = apply(np.zeros_like(xtr[:1]))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs, eta_min=args.lr * 0.01)
    xn, yn = torch.from_numpy((xtr - mx) / sxd), torch.from_numpy((ytr - my) / syd)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xn), generator=gen)
        total = 0.0
        for i in range(0, len(xn), args.batch_size):
            idx = perm[i:i + args.batch_size]
            opt.zero_grad()
            loss = pooled_rel_l2(model(xn[idx]), yn[idx])
            loss.backward()
            opt.step()
            total += loss.item()
        sched.step()
        print(f"epoch {epoch}: train loss {total / math.ceil(len(xn) / args.batch_size):.4f}", file=sys.stderr)
    train_s = time.time() - start

    val = rel_l2(apply(xva), yva)
    test = rel_l2(apply(xte), yte)
    eq = [i for i, x0 in enumerate(x0va) if 0.3 <= x0 <= 0.7][:8] or list(range(min(8, len(xva))))
    st, sx = round(10.0 / dt), round(0.1 / dx)
    e_delay = equivariance(apply, xva[eq], st, 0)
    e_space = equivariance(apply, xva[eq], 0, sx)
    zero = apply(np.zeros_like(xtr[:1]))
    figures = {
        "params": n_params,
        "seed": args.seed,
        "epochs": args.epochs,
        "train_s": train_s,
        "validation": float(np.median(val, axis=0).mean()),
        "test_v": float(np.median(test[:, 0])),
        "e_delay_v": float(np.mean(e_delay[:, 0])),
        "e_space_v": float(np.mean(e_space[:, 0])),
        "e_delay_v_median": float(np.median(e_delay[:, 0])),
        "e_space_v_median": float(np.median(e_space[:, 0])),
        "delay_steps": st,
        "space_steps": sx,
        "zero_input_max_abs_v": float(np.abs(zero[0, 0]).max()),
        "zero_input_max_abs_w": float(np.abs(zero[0, 1]).max()),
        "zero_input_at_init_max_abs_v": float(np.abs(zero_at_init[0, 0]).max()),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
