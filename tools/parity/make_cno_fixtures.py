#!/usr/bin/env python3
"""Writes the CNO forward-parity fixtures of `no-models` (test `cno_parity`).

The reference is the official simplified 2D CNO (`CNO2d_simplified/CNO2d.py` of
https://github.com/camlab-ethz/ConvolutionalNeuralOperator). Its code is NOT part of this
repository: obtain it in a scratch directory and pass that directory to this script, e.g.

    git clone https://github.com/camlab-ethz/ConvolutionalNeuralOperator /tmp/cno-src
    python tools/parity/make_cno_fixtures.py /tmp/cno-src/CNO2d_simplified [OUT_DIR]

(any checkout works; the fixtures were made from commit
6e76519 (2025-11-24) of the upstream main branch, see `docs/cno-equivariance.md`). Needs torch,
numpy and safetensors.

For each case below, with seeded random weights (PyTorch's default init, and random
batch-norm affine parameters and running statistics where batch norm is on), this saves
under crates/no-models/tests/fixtures/ (about 250 KB in all):
  cno_<case>.weights.safetensors  the state_dict (f32 values, which the f64 reference
                                  run uses exactly), renamed to this project's variable
                                  names (see RENAMES);
  cno_<case>.json                 this project's CnoConfig for the same network;
  cno_<case>.io.safetensors       input [2, 1, n, n] (f64), the official output in f64
                                  (`output_f64`) and with the same weights cast to f32
                                  (`output_f32`, from the f32-cast input); for batch-norm
                                  cases also the training-mode output (`output_train_f64`,
                                  batch statistics).
The official code only supports square grids (`size` × `size`); an odd size is used so
that the ⌊n/2^l⌋ level sizes and the non-integer resampling ratios are exercised.
"""
import json
import os
import re
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "no-models", "tests", "fixtures")

CASES = [
    # name, official constructor arguments, batch norm random stats
    ("plain", dict(in_dim=1, out_dim=2, size=21, N_layers=2, N_res=1, N_res_neck=2,
                   channel_multiplier=4, use_bn=False)),
    ("bn", dict(in_dim=1, out_dim=2, size=19, N_layers=3, N_res=1, N_res_neck=1,
                channel_multiplier=4, use_bn=True)),
]

# Official state_dict names → this project's (`crates/no-models/src/cno.rs`).
RENAMES = [
    (r"^(lift|project)\.inter_CNOBlock\.convolution\.", r"\1.block.conv."),
    (r"^(lift|project)\.convolution\.", r"\1.conv."),
    (r"^(encoder|decoder)\.(\d+)\.convolution\.", r"\1.\2.conv."),
    (r"^(encoder|decoder)\.(\d+)\.batch_norm\.", r"\1.\2.bn."),
    (r"^ED_expansion\.(\d+)\.convolution\.", r"expansion.\1.conv."),
    (r"^ED_expansion\.(\d+)\.batch_norm\.", r"expansion.\1.bn."),
    (r"^res_nets\.(\d+)\.res_nets\.(\d+)\.convolution1\.", r"res.\1.\2.first.conv."),
    (r"^res_nets\.(\d+)\.res_nets\.(\d+)\.convolution2\.", r"res.\1.\2.second.conv."),
    (r"^res_nets\.(\d+)\.res_nets\.(\d+)\.batch_norm1\.", r"res.\1.\2.first.bn."),
    (r"^res_nets\.(\d+)\.res_nets\.(\d+)\.batch_norm2\.", r"res.\1.\2.second.bn."),
    (r"^res_net_neck\.res_nets\.(\d+)\.convolution1\.", r"neck.\1.first.conv."),
    (r"^res_net_neck\.res_nets\.(\d+)\.convolution2\.", r"neck.\1.second.conv."),
    (r"^res_net_neck\.res_nets\.(\d+)\.batch_norm1\.", r"neck.\1.first.bn."),
    (r"^res_net_neck\.res_nets\.(\d+)\.batch_norm2\.", r"neck.\1.second.bn."),
]


def rename(key):
    for pattern, repl in RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise KeyError(f"no rename rule for official parameter {key!r}")


def project_config(args):
    """This project's CnoConfig (JSON) for the official constructor arguments."""
    return {
        "in_channels": args["in_dim"],
        "out_channels": args["out_dim"],
        "n_layers": args["N_layers"],
        "n_res": args["N_res"],
        "n_res_neck": args["N_res_neck"],
        "channel_multiplier": args["channel_multiplier"],
        "latent_lift_proj_dim": 64,  # hard-wired in the official LiftProjectBlock
        "kernel_size": 3,
        "batch_norm": args["use_bn"],
        "negative_slope": 0.01,
        "upsampling": 2,
    }


def randomise_batch_norms(model, gen):
    """Non-trivial affine parameters and running statistics, so eval mode is tested."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 1.0 + 0.2 * torch.randn(c, generator=gen, dtype=m.weight.dtype)
            m.bias.data = 0.1 * torch.randn(c, generator=gen, dtype=m.bias.dtype)
            m.running_mean.data = 0.1 * torch.randn(c, generator=gen, dtype=m.running_mean.dtype)
            m.running_var.data = 0.5 + torch.rand(c, generator=gen, dtype=m.running_var.dtype)


def make_case(CNO2d, name, args, out_dir, seed):
    torch.manual_seed(seed)
    model = CNO2d(**args).double()
    gen = torch.Generator().manual_seed(seed + 100)
    randomise_batch_norms(model, gen)
    with torch.no_grad():
        # Weights exactly representable in f32: stored as f32, the same numbers in both runs.
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(value.float().double())
    n = args["size"]
    x = torch.randn(2, args["in_dim"], n, n, generator=gen, dtype=torch.float64)

    weights = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        weights[rename(key)] = value.detach().float().contiguous().clone()

    io = {"input": x}
    model.eval()
    with torch.no_grad():
        io["output_f64"] = model(x).contiguous()
        model32 = CNO2d(**args)
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()
                                 if not k.endswith("num_batches_tracked")}, strict=False)
        model32.eval()
        io["output_f32"] = model32(x.float()).double().contiguous()
    if args["use_bn"]:
        train_model = CNO2d(**args).double()
        train_model.load_state_dict(model.state_dict())
        train_model.train()
        with torch.no_grad():
            io["output_train_f64"] = train_model(x).contiguous()

    prefix = os.path.join(out_dir, f"cno_{name}")
    save_file(weights, prefix + ".weights.safetensors")
    save_file(io, prefix + ".io.safetensors")
    with open(prefix + ".json", "w") as f:
        json.dump(project_config(args), f, indent=2)
        f.write("\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n_params} parameters, output {tuple(io['output_f64'].shape)}, "
          f"|y| = {io['output_f64'].norm():.4e}, f32 vs f64 "
          f"{((io['output_f32'] - io['output_f64']).norm() / io['output_f64'].norm()):.2e}")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.path.insert(0, os.path.abspath(sys.argv[1]))
    from CNO2d import CNO2d  # the official simplified 2D CNO

    out_dir = sys.argv[2] if len(sys.argv) > 2 else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    for seed, (name, args) in enumerate(CASES):
        make_case(CNO2d, name, args, out_dir, seed)


if __name__ == "__main__":
    main()
