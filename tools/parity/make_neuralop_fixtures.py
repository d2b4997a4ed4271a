#!/usr/bin/env python3
"""Writes the neuraloperator import-parity fixtures of `no-models`.

For FNO, TFNO and LocalNO on tiny configs (kilobytes), this saves under
crates/no-models/tests/fixtures/neuralop/:
  <name>.state_dict.safetensors  the model's state_dict in the import convention:
                                 tensor entries only, complex tensors as
                                 torch.view_as_real (trailing dim 2), neuraloperator keys;
  <name>.json                    {"model": class name, **constructor arguments};
  <name>.io.safetensors          a random input [2, 1, nt, nx] and the model's output.

Run with the anchor environment (neuraloperator 2.0, torch-harmonics 0.8.0):
  python tools/parity/make_neuralop_fixtures.py [OUT_DIR]
The Rust test `import_parity` reads these files; it needs no Python.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from neuralop.models import FNO, TFNO
from neuralop.models.local_no import LocalNO

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "no-models", "tests", "fixtures", "neuralop")

CASES = [
    # name, class, constructor arguments, input grid (nt, nx)
    ("fno", FNO, dict(n_modes=[6, 4], in_channels=1, out_channels=2, hidden_channels=4, n_layers=2), (12, 10)),
    ("tfno", TFNO, dict(n_modes=[6, 4], in_channels=1, out_channels=2, hidden_channels=6, n_layers=2, rank=0.4), (12, 10)),
    (
        "fno_padded",
        FNO,
        dict(n_modes=[4, 4], in_channels=1, out_channels=2, hidden_channels=4, n_layers=2,
             positional_embedding=None, domain_padding=0.25, lifting_channel_ratio=0),
        (8, 12),
    ),
    (
        "local_no",
        LocalNO,
        dict(n_modes=[6, 6], in_channels=1, out_channels=2, hidden_channels=4, n_layers=2,
             default_in_shape=[12, 12]),
        (12, 12),
    ),
]


def state_dict_tensors(model):
    out = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. neuraloperator's `_metadata` entry
        if value.is_complex():
            value = torch.view_as_real(value)
        out[key] = value.detach().contiguous().clone()
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(2026)
    for name, cls, kwargs, grid in CASES:
        model = cls(**kwargs).eval()
        # Biases and gates start at constants; perturb every parameter so that each one matters.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(2, kwargs["in_channels"], *grid)
        with torch.no_grad():
            y = model(x)
        save_file(state_dict_tensors(model), os.path.join(out_dir, f"{name}.state_dict.safetensors"))
        save_file({"input": x.contiguous(), "output": y.contiguous()}, os.path.join(out_dir, f"{name}.io.safetensors"))
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump({"model": cls.__name__, **kwargs}, f, indent=1)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {cls.__name__} {kwargs} params {n} out {tuple(y.shape)} |y| {y.abs().max():.3f}")


if __name__ == "__main__":
    main()
