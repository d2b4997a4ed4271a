#!/usr/bin/env python3
"""The zero-current check of docs/cno-equivariance.md, in plain Python (no numpy).

    zero_input.py write OUT.npy STUDY.json   # a zero current [1, 1, nt, nx] (f32) on the study's grid
    zero_input.py read PRED.npy              # max |v| and max |w| of a prediction [1, 2, nt, nx]

With no current the FHN solution is the rest state v = w = 0 everywhere, so the maxima
are the distance of the model's answer from the rest state (`infer` denormalises).
"""
import ast
import json
import struct
import sys


def write_zeros(path, shape):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (
        ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else ""))
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    count = 1
    for n in shape:
        count *= n
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(b"\x00" * (4 * count))


def read_f32(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise ValueError(f"{path} is not a .npy file")
    major = data[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", data[8:10]), 10
    else:
        (hlen,), start = struct.unpack("<I", data[8:12]), 12
    header = ast.literal_eval(data[start:start + hlen].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        raise ValueError(f"{path}: expected little-endian f32 in C order, got {header}")
    body = data[start + hlen:]
    values = struct.unpack(f"<{len(body) // 4}f", body)
    return header["shape"], values


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if sys.argv[1] == "write":
        with open(sys.argv[3]) as f:
            out = json.load(f)["protocol"]["output"]
        write_zeros(sys.argv[2], (1, 1, out["nt"], out["nx"]))
    else:
        shape, values = read_f32(sys.argv[2])
        plane = shape[2] * shape[3]
        v, w = values[:plane], values[plane:2 * plane]
        print(json.dumps({"max_abs_v": max(map(abs, v)), "max_abs_w": max(map(abs, w)),
                          "mean_v": sum(v) / plane, "mean_w": sum(w) / plane}))


if __name__ == "__main__":
    main()
