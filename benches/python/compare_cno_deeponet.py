#!/usr/bin/env python
"""Times the PyTorch anchors of CNO, DeepONet, DeepONet-CNN and POD-DeepONet on the same
CPU and thread count as the Rust criterion benches (`benches/models/others.rs`), and prints
each figure next to the Rust one with the ratio.

Work timed (input [B, 1, 100, 100] -> output [B, 2, 100, 100], float32):
- forward at batch 1 and 32 under `torch.no_grad()`;
- one training step at batch 32: forward + MSE + backward + AdamW.
Figures are the minimum over `--repeats` timed runs after warm-up.

Models (the same configurations as the Rust defaults):
- CNO: the official simplified CNO2d (camlab-ethz/ConvolutionalNeuralOperator,
  `CNO2d_simplified`), written here from its description (antialiased bicubic
  up x2 -> LeakyReLU -> down activation, U-Net with residual stacks and skip expansions),
  N_layers 4, N_res 4, N_res_neck 4, channel multiplier 16, no batch norm, latent 64.
  It has 2,006,058 parameters, as the Rust model (checked below).
- DON: DeepXDE `DeepONetCartesianProd`, branch [10000, 256, 256, 256], trunk
  [2, 256, 256, 256], tanh, Glorot normal, num_outputs 2, split_both.
- DON-CNN: the same with a user-defined CNN branch (channels [40, 80, 100, 120], k3, s2,
  ReLU, then MLP [80, 80, 80] with residual links -> 800), trunk [2, 80, 80, 80, 800] tanh.
- POD-DON: DeepXDE `PODDeepONet` with one branch [10000, 256, 256, 128] and a
  block-diagonal basis (64 modes for v, 64 for w), the same computation as the Rust model.

Usage (run the Rust benches first so that their estimates exist):

    cargo bench --bench models -- models_others
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=536870912 \
        DDE_BACKEND=pytorch python benches/python/compare_cno_deeponet.py --threads 2

The malloc settings keep glibc from returning (and re-faulting) PyTorch's large buffers,
which otherwise costs the large models up to half their time and flatters any competitor.
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("DDE_BACKEND", "pytorch")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

N = 100


# ---------------------------------------------------------------- CNO (simplified 2D)
class CnoActivation(nn.Module):
    def __init__(self, out_size):
        super().__init__()
        self.out_size = out_size

    def forward(self, x):
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(2 * h, 2 * w), mode="bicubic", antialias=True)
        x = F.leaky_relu(x)
        return F.interpolate(x, size=self.out_size, mode="bicubic", antialias=True)


class CnoBlock(nn.Module):
    def __init__(self, c_in, c_out, out_size, bn):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.act = CnoActivation(out_size)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    def __init__(self, c, size, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c) if bn else nn.Identity()
        self.act = CnoActivation(size)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))


class LiftProject(nn.Module):
    def __init__(self, c_in, c_out, size, latent=64):
        super().__init__()
        self.block = CnoBlock(c_in, latent, size, False)
        self.conv = nn.Conv2d(latent, c_out, 3, padding=1)

    def forward(self, x):
        return self.conv(self.block(x))


class Cno2d(nn.Module):
    def __init__(self, c_in=1, c_out=2, size=N, n_layers=4, n_res=4, n_res_neck=4, cm=16, bn=False):
        super().__init__()
        L = n_layers
        enc = [cm // 2] + [cm * 2**i for i in range(L)]
        dec_in = [enc[L]] + [2 * enc[L - i] for i in range(1, L)]
        dec_out = [enc[L - 1 - i] for i in range(L)]
        sizes = [(size // 2**i, size // 2**i) for i in range(L + 1)]
        self.L = L
        self.lift = LiftProject(c_in, enc[0], sizes[0])
        self.project = LiftProject(enc[0] + dec_out[-1], c_out, sizes[0])
        self.encoder = nn.ModuleList([CnoBlock(enc[i], enc[i + 1], sizes[i + 1], bn) for i in range(L)])
        self.expansion = nn.ModuleList([CnoBlock(enc[i], enc[i], sizes[i], bn) for i in range(L + 1)])
        self.decoder = nn.ModuleList([CnoBlock(dec_in[i], dec_out[i], sizes[L - i - 1], bn) for i in range(L)])
        self.res = nn.ModuleList(
            [nn.Sequential(*[ResidualBlock(enc[i], sizes[i], bn) for _ in range(n_res)]) for i in range(L)]
        )
        self.neck = nn.Sequential(*[ResidualBlock(enc[L], sizes[L], bn) for _ in range(n_res_neck)])

    def forward(self, x):
        x = self.lift(x)
        skips = []
        for i in range(self.L):
            skips.append(self.res[i](x))
            x = self.encoder[i](x)
        x = self.neck(x)
        for i in range(self.L):
            lvl = self.L - i
            x = self.expansion[lvl](x) if i == 0 else torch.cat((x, self.expansion[lvl](skips[lvl])), 1)
            x = self.decoder[i](x)
        return self.project(torch.cat((x, self.expansion[0](skips[0])), 1))


# ---------------------------------------------------------------- DeepONet family
def grid_coords():
    t = torch.linspace(0, 1, N)
    tt, xx = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([tt.reshape(-1), xx.reshape(-1)], 1)


class CnnBranch(nn.Module):
    def __init__(self, channels=(40, 80, 100, 120), hidden=(80, 80, 80), p=800):
        super().__init__()
        convs, c, n = [], 1, N
        for co in channels:
            convs += [nn.Conv2d(c, co, 3, stride=2), nn.ReLU()]
            c, n = co, (n - 3) // 2 + 1
        self.convs = nn.Sequential(*convs)
        sizes = [c * n * n, *hidden]
        self.hidden = nn.ModuleList([nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])])
        self.out = nn.Linear(sizes[-1], p)

    def forward(self, u):
        h = self.convs(u.reshape(-1, 1, N, N)).flatten(1)
        for lin in self.hidden:
            z = F.relu(lin(h))
            h = z + h if z.shape == h.shape else z
        return self.out(h)


class Wrapped(nn.Module):
    """Makes a DeepXDE net look like an operator [B, 1, N, N] -> [B, 2, N, N]."""

    def __init__(self, net, pod=False):
        super().__init__()
        self.net, self.pod = net, pod
        self.register_buffer("coords", grid_coords())

    def forward(self, u):
        b = u.shape[0]
        if self.pod:
            return self.net((u.reshape(b, -1), None)).reshape(b, 2, N, N)
        return self.net((u.reshape(b, -1), self.coords)).permute(0, 2, 1).reshape(b, 2, N, N)


def build_models():
    import deepxde as dde

    models = {"cno": Cno2d()}
    models["don"] = Wrapped(
        dde.nn.DeepONetCartesianProd(
            [N * N, 256, 256, 256], [2, 256, 256, 256], "tanh", "Glorot normal",
            num_outputs=2, multi_output_strategy="split_both",
        )
    )
    models["don_cnn"] = Wrapped(
        dde.nn.DeepONetCartesianProd(
            [N * N, CnnBranch(), 800], [2, 80, 80, 80, 800], {"branch": "relu", "trunk": "tanh"}, "Glorot normal",
            num_outputs=2, multi_output_strategy="split_both",
        )
    )
    basis = torch.zeros(2 * N * N, 128)
    q, _ = torch.linalg.qr(torch.randn(N * N, 64))
    basis[: N * N, :64] = q * N
    basis[N * N :, 64:] = q * N
    pod = dde.nn.PODDeepONet(basis, [N * N, 256, 256, 128], "tanh", "Glorot normal")
    models["pod_don"] = Wrapped(pod, pod=True)
    return models


# ---------------------------------------------------------------- timing
def best_of(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def time_model(model, repeats):
    x1, x32 = torch.randn(1, 1, N, N), torch.randn(32, 1, N, N)
    y32 = torch.randn(32, 2, N, N)
    out = {}
    model.eval()
    with torch.no_grad():
        out["forward/1"] = best_of(lambda: model(x1), repeats)
        out["forward/32"] = best_of(lambda: model(x32), repeats)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x32), y32)
        loss.backward()
        opt.step()

    out["train_step/32"] = best_of(step, max(2, repeats // 2), warmup=1)
    return out


def rust_figure(criterion_dir, name, what):
    kind, batch = what.split("/")
    path = Path(criterion_dir) / "models_others" / f"{name}_{kind}" / batch / "new" / "estimates.json"
    if not path.exists():
        return None
    est = json.loads(path.read_text())
    # The criterion "slope"/"mean" point estimates are in nanoseconds; take the median.
    return est["median"]["point_estimate"] / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="cno,don,don_cnn,pod_don")
    ap.add_argument("--criterion-dir", default=str(Path(__file__).resolve().parents[2] / "target" / "criterion"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = build_models()
    n_cno = sum(p.numel() for p in models["cno"].parameters())
    assert n_cno == 2_006_058, n_cno
    print(f"torch {torch.__version__}, {args.threads} threads, min of {args.repeats} runs (ms)")
    print(f"| model | params | work | PyTorch ms | Rust ms | PyTorch / Rust |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = models[name]
        params = sum(p.numel() for p in model.parameters())
        for what, ms in time_model(model, args.repeats).items():
            rust = rust_figure(args.criterion_dir, name, what)
            rust_s = f"{rust:.1f}" if rust is not None else "n/a"
            ratio = f"{ms / rust:.2f}x" if rust else "n/a"
            print(f"| {name} | {params:,} | {what} | {ms:.1f} | {rust_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
