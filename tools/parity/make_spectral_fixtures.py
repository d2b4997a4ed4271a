#!/usr/bin/env python3
"""Parity fixtures for no-layers' SpectralConv against neuraloperator 2.0.

Builds small neuraloperator `SpectralConv` layers (dense and Tucker, 1D and 2D) with
random weights, runs them on random inputs, and writes one safetensors file per case
under crates/no-layers/tests/fixtures/spectral_<case>.safetensors with:

* `x`: input [B, C_in, d1, (d2)];
* `y`: output on the input grid; `y_out`: output with `output_shape` (only the last
  axis changes size: neuraloperator's irfftn pads centred axes at the end, see
  docs/layers-spectral.md);
* every entry of the layer's state_dict under its own key, complex tensors as
  `torch.view_as_real` (trailing axis of 2);
* metadata: in/out channels, n_modes, factorization, rank, output_shape.

Run with the anchors' venv (neuraloperator 2.0, torch):
    python tools/parity/make_spectral_fixtures.py
The Rust test (crates/no-layers/tests/spectral_parity.rs) needs no Python.
"""
import json
import pathlib

import torch
from neuralop.layers.spectral_convolution import SpectralConv
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates/no-layers/tests/fixtures"

CASES = [
    # name, in, out, n_modes, grid, factorization, output_shape
    ("dense_1d", 3, 2, (8,), (20,), None, (27,)),
    ("dense_2d", 3, 4, (6, 6), (12, 10), None, (12, 15)),
    ("dense_2d_small_grid", 2, 3, (8, 8), (6, 6), None, (6, 8)),
    ("tucker_1d", 3, 2, (8,), (20,), "tucker", (13,)),
    ("tucker_2d", 3, 4, (6, 6), (12, 10), "tucker", (12, 16)),
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for i, (name, cin, cout, modes, grid, fac, out_shape) in enumerate(CASES):
        torch.manual_seed(1234 + i)
        layer = SpectralConv(
            cin,
            cout,
            modes,
            factorization=fac,
            rank=0.5,
            implementation="factorized",
        )
        x = torch.randn(2, cin, *grid)
        with torch.no_grad():
            y = layer(x)
            y_out = layer(x, output_shape=out_shape)
        tensors = {"x": x, "y": y, "y_out": y_out}
        for key, value in layer.state_dict().items():
            if key.startswith("_"):
                continue
            value = value.detach()
            tensors[key] = torch.view_as_real(value) if value.is_complex() else value
        tensors = {k: v.contiguous().float() for k, v in tensors.items()}
        meta = {
            "in_channels": cin,
            "out_channels": cout,
            "n_modes": list(modes),
            "factorization": fac or "dense",
            "rank": 0.5,
            "output_shape": list(out_shape),
            "neuralop_rank": [int(r) for r in getattr(layer.weight, "rank", [])] if fac else [],
        }
        path = OUT / f"spectral_{name}.safetensors"
        save_file(tensors, str(path), metadata={"config": json.dumps(meta)})
        print(f"{path.name}: {path.stat().st_size} bytes, keys {sorted(tensors)}")


if __name__ == "__main__":
    main()
