#!/usr/bin/env python
"""Makes the DeepXDE parity fixtures of `no-models` (DeepONet and POD-DeepONet forward).

Run with the project's anchor environment:

    DDE_BACKEND=pytorch python tools/parity/make_deepxde_fixtures.py

It writes, under crates/no-models/tests/fixtures/ (a few kilobytes each, float64):

- deepxde_don.safetensors: a `DeepONetCartesianProd` (multi_output_strategy="split_both",
  tanh, Glorot normal) on a 6 x 5 grid with random (non-zero) biases, its weights under the
  Rust names (`branch.{i}.weight`, `trunk.{i}.bias`, `bias`), an input `u` [B, 1, 6, 5],
  the grid output `y` [B, 2, 6, 5], query points `coords` [N, 2] and `y_at` [B, 2, N].
- deepxde_pod.safetensors: training outputs `y_train` [12, 2, 6, 5]; the NumPy POD of each
  field (centred, eigen-decomposition of the snapshot covariance as in the lu-group
  `deeponet_POD.py`, 4 modes, normalised to unit 2-norm with the largest entry positive):
  `pod.mean` [2, 30], `pod.basis{k}` [30, 4]; a `PODDeepONet` whose branch predicts all
  8 coefficients and whose `pod_basis` is the block-diagonal of sqrt(P) * basis_k, its
  branch weights, an input `u` and `y` = PODDeepONet output reshaped + mean.

The Rust tests (crates/no-models/tests/parity_deepxde.rs) read these without Python.
"""

import os
from pathlib import Path

os.environ.setdefault("DDE_BACKEND", "pytorch")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import deepxde as dde  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

NT, NX, B = 6, 5, 3
P = NT * NX
OUT = Path(__file__).resolve().parents[2] / "crates" / "no-models" / "tests" / "fixtures"


def grid_coords():
    t = np.linspace(0.0, 1.0, NT)
    x = np.linspace(0.0, 1.0, NX)
    tt, xx = np.meshgrid(t, x, indexing="ij")
    return np.stack([tt.ravel(), xx.ravel()], axis=1)


def fnn_weights(prefix, fnn, gen):
    """Random non-zero biases (DeepXDE starts them at zero, which would test nothing)."""
    out = {}
    for i, lin in enumerate(fnn.linears):
        with torch.no_grad():
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=gen, dtype=torch.float64) * 0.1)
        out[f"{prefix}.{i}.weight"] = lin.weight.detach().numpy().copy()
        out[f"{prefix}.{i}.bias"] = lin.bias.detach().numpy().copy()
    return out


def make_don(gen):
    torch.manual_seed(1)
    net = dde.nn.DeepONetCartesianProd(
        [P, 16, 16, 8],
        [2, 16, 16, 8],
        "tanh",
        "Glorot normal",
        num_outputs=2,
        multi_output_strategy="split_both",
    )
    tensors = fnn_weights("branch", net.branch, gen)
    tensors.update(fnn_weights("trunk", net.trunk, gen))
    with torch.no_grad():
        for b in net.b:
            b.copy_(torch.randn((), generator=gen, dtype=torch.float64))
    tensors["bias"] = np.array([float(b.detach()) for b in net.b])
    u = torch.randn((B, 1, NT, NX), generator=gen, dtype=torch.float64)
    coords = torch.rand((7, 2), generator=gen, dtype=torch.float64)
    grid = torch.as_tensor(grid_coords())
    with torch.no_grad():
        y = net((u.reshape(B, -1), grid))  # [B, N, 2]
        y_at = net((u.reshape(B, -1), coords))
    tensors["u"] = u.numpy()
    tensors["y"] = y.permute(0, 2, 1).reshape(B, 2, NT, NX).numpy().copy()
    tensors["coords"] = coords.numpy()
    tensors["y_at"] = y_at.permute(0, 2, 1).numpy().copy()
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT / "deepxde_don.safetensors"))


def pod_numpy(y, modes):
    """lu-group's recipe (mean, covariance, eigh, descending), kept orthonormal."""
    mean = y.mean(axis=0)
    yc = y - mean
    c = yc.T @ yc / (len(y) - 1)
    w, v = np.linalg.eigh(c)
    v = v[:, ::-1][:, :modes]
    for j in range(modes):
        if v[np.argmax(np.abs(v[:, j])), j] < 0:
            v[:, j] *= -1.0
    return mean, v


def make_pod(gen):
    y_train = torch.randn((12, 2, NT, NX), generator=gen, dtype=torch.float64).numpy()
    # Give the data a decaying spectrum so that the leading modes are well separated.
    y_train *= np.linspace(1.0, 0.1, P).reshape(1, 1, NT, NX)
    means, bases = [], []
    for k in range(2):
        m, v = pod_numpy(y_train[:, k].reshape(12, P), 4)
        means.append(m)
        bases.append(v)
    block = np.zeros((2 * P, 8))
    block[:P, :4] = np.sqrt(P) * bases[0]
    block[P:, 4:] = np.sqrt(P) * bases[1]
    torch.manual_seed(2)
    net = dde.nn.PODDeepONet(block, [P, 16, 16, 8], "tanh", "Glorot normal")
    net.pod_basis = torch.as_tensor(block)
    tensors = fnn_weights("branch", net.branch, gen)
    u = torch.randn((B, 1, NT, NX), generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y = net((u.reshape(B, -1), None)).numpy()  # [B, 2P]
    y = y.reshape(B, 2, P) + np.stack(means)[None]
    tensors.update(
        {
            "y_train": y_train,
            "pod.mean": np.stack(means),
            "pod.basis0": bases[0],
            "pod.basis1": bases[1],
            "u": u.numpy(),
            "y": y.reshape(B, 2, NT, NX),
        }
    )
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(OUT / "deepxde_pod.safetensors"))


def main():
    dde.config.set_default_float("float64")
    torch.set_default_dtype(torch.float64)
    OUT.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    make_don(gen)
    make_pod(gen)
    for f in sorted(OUT.glob("deepxde_*.safetensors")):
        print(f, f.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
