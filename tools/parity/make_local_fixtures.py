#!/usr/bin/env python3
"""Parity fixtures for no-layers' local pieces against neuraloperator 2.0 / PyTorch.

Writes crates/no-layers/tests/fixtures/local_<case>.safetensors (kilobytes each):

* fd_*: neuraloperator `FiniteDifferenceConvolution` (weights `conv.weight`), called
  as LocalNO calls it, `grid_width = 1 / (N / default_in_shape[0])`;
* disco_*: neuraloperator `EquidistantDiscreteContinuousConv2d` (`weight`, `bias`), its
  effective stencil `filter` = q_weight * get_local_filter_matrix() and its output;
  `disco_filter_100` stores only the filter at the study's 100x100 grid;
* bicubic_*: `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` in f64;
* cno_act_*: the simplified CNO activation (bicubic-AA up x2, LeakyReLU(0.01), down);
* mlp / skip_linear / skip_gating / grid_embedding: ChannelMLP, skip connections and
  GridEmbedding2D with their state_dict keys.

Every file has the input `x`, the output `y`, the layer's tensors under their
neuraloperator names, and a JSON `config` metadata entry.

Run with the anchors' venv:  python tools/parity/make_local_fixtures.py
The Rust test (crates/no-layers/tests/local_parity.rs) needs no Python.
"""
import json
import pathlib

import torch
import torch.nn.functional as F
from neuralop.layers.channel_mlp import ChannelMLP
from neuralop.layers.differential_conv import FiniteDifferenceConvolution
from neuralop.layers.discrete_continuous_convolution import EquidistantDiscreteContinuousConv2d
from neuralop.layers.embeddings import GridEmbedding2D
from neuralop.layers.skip_connections import skip_connection
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/no-layers/tests/fixtures"


def save(name, tensors, config):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(OUT / f"local_{name}.safetensors"), metadata={"config": json.dumps(config)})


def fd_cases():
    cases = [
        # name, in, out, n_dim, kernel, groups, padding, grid, default_res
        ("fd_2d_periodic", 3, 4, 2, 3, 1, "periodic", (12, 12), 8),
        ("fd_2d_depthwise_zeros", 3, 3, 2, 3, 3, "zeros", (10, 10), 10),
        ("fd_2d_k5", 2, 2, 2, 5, 1, "periodic", (9, 9), 6),
        ("fd_1d", 2, 3, 1, 3, 1, "periodic", (16,), 8),
    ]
    for i, (name, cin, cout, nd, k, g, pad, grid, res) in enumerate(cases):
        torch.manual_seed(100 + i)
        layer = FiniteDifferenceConvolution(cin, cout, nd, kernel_size=k, groups=g, padding=pad)
        x = torch.randn(2, cin, *grid)
        grid_width = 1 / (x.shape[-1] / res)
        with torch.no_grad():
            y = layer(x, grid_width)
        cfg = dict(in_channels=cin, out_channels=cout, n_dim=nd, kernel_size=k, groups=g, padding=pad, default_resolution=res)
        save(name, {"x": x, "y": y, "conv.weight": layer.conv.weight}, cfg)


def disco_cases():
    cases = [
        # name, in, out, n, kernel_shape, radius (None = default), groups
        ("disco_16_default", 3, 4, 16, [2, 4], None, 1),
        ("disco_12_default_k34", 2, 3, 12, [3, 4], None, 1),
        ("disco_16_r3px", 3, 4, 16, [2, 4], 3 * 2 / 16, 1),
        ("disco_16_r3px_k34_groups", 4, 2, 16, [3, 4], 3 * 2 / 16, 2),
        ("disco_12_r2px_iso", 2, 2, 12, [3, 1], 2 * 2 / 12, 1),
    ]
    for i, (name, cin, cout, n, ks, radius, g) in enumerate(cases):
        torch.manual_seed(200 + i)
        layer = EquidistantDiscreteContinuousConv2d(
            cin, cout, in_shape=(n, n), out_shape=(n, n), kernel_shape=ks, radius_cutoff=radius, groups=g
        )
        with torch.no_grad():
            layer.bias.normal_()
        x = torch.randn(2, cin, n, n)
        with torch.no_grad():
            y = layer(x)
        filt = layer.q_weight * layer.get_local_filter_matrix()
        cfg = dict(in_channels=cin, out_channels=cout, n=n, kernel_shape=ks, radius_cutoff=radius, groups=g,
                   psi=layer.psi_local_h)
        save(name, {"x": x, "y": y, "weight": layer.weight, "bias": layer.bias, "filter": filt}, cfg)
    layer = EquidistantDiscreteContinuousConv2d(1, 1, in_shape=(100, 100), out_shape=(100, 100), kernel_shape=[2, 4])
    filt = layer.q_weight * layer.get_local_filter_matrix()
    save("disco_filter_100", {"filter": filt}, dict(n=100, kernel_shape=[2, 4], radius_cutoff=None, psi=layer.psi_local_h))


def bicubic_cases():
    cases = [((10, 12), (23, 7)), ((16, 16), (32, 32)), ((32, 32), (16, 16)), ((7, 9), (21, 4)), ((25, 25), (9, 10))]
    for i, (src, dst) in enumerate(cases):
        torch.manual_seed(300 + i)
        x = torch.randn(1, 2, *src, dtype=torch.float64)
        y = F.interpolate(x, size=dst, mode="bicubic", antialias=True, align_corners=False)
        save(f"bicubic_{i}", {"x": x, "y": y}, dict(src=list(src), dst=list(dst)))


def cno_activation_cases():
    for i, (size, out) in enumerate([((12, 12), (12, 12)), ((12, 10), (6, 5)), ((8, 8), (16, 16))]):
        torch.manual_seed(400 + i)
        x = torch.randn(2, 3, *size, dtype=torch.float64)
        up = F.interpolate(x, size=(2 * size[0], 2 * size[1]), mode="bicubic", antialias=True)
        y = F.interpolate(F.leaky_relu(up, 0.01), size=out, mode="bicubic", antialias=True)
        save(f"cno_act_{i}", {"x": x, "y": y}, dict(out=list(out)))


def small_piece_cases():
    torch.manual_seed(500)
    mlp = ChannelMLP(in_channels=3, out_channels=5, hidden_channels=4, n_layers=3)
    x = torch.randn(2, 3, 6, 5)
    with torch.no_grad():
        y = mlp(x)
    save("mlp", {"x": x, "y": y, **mlp.state_dict()}, dict(in_channels=3, out_channels=5, hidden_channels=4, n_layers=3))

    lin = skip_connection(3, 4, n_dim=2, skip_type="linear")
    with torch.no_grad():
        y = lin(x)
    save("skip_linear", {"x": x, "y": y, **lin.state_dict()}, dict(in_channels=3, out_channels=4, kind="linear"))

    gate = skip_connection(3, 3, n_dim=2, skip_type="soft-gating")
    with torch.no_grad():
        gate.weight.normal_()
        y = gate(x)
    save("skip_gating", {"x": x, "y": y, **gate.state_dict()}, dict(in_channels=3, out_channels=3, kind="soft-gating"))

    emb = GridEmbedding2D(in_channels=3)
    with torch.no_grad():
        y = emb(x)
    save("grid_embedding", {"x": x, "y": y}, dict(in_channels=3))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    fd_cases()
    disco_cases()
    bicubic_cases()
    cno_activation_cases()
    small_piece_cases()
    print("wrote", sorted(p.name for p in OUT.glob("local_*.safetensors")))


if __name__ == "__main__":
    main()
