#!/usr/bin/env python3
"""Writes the study JSON files of the CNO equivariance experiments (docs/cno-equivariance.md).

    python tools/cno_experiments/make_studies.py studies BASE.json OUT_DIR [VARIANT ...]
    python tools/cno_experiments/make_studies.py protocol BASE.json OUT.json

BASE.json is the quick study restricted to CNO (`base.json` beside this script: the
OUT/study.json that `benchmark --models cno --remedies none` writes, with the evaluation
trimmed to what the experiments report -- no finer-grid test, one latency batch size, the
E curves at the table's two shifts only -- so each run costs less; the accuracy and E
columns are computed exactly as in the study). `studies` writes one study per
variant and seed, OUT_DIR/<variant>.s<seed>.json, each a copy of the base with one change;
`protocol` writes the base's protocol alone (for generate_dataset and the official-code run).
The seed changes the weights' initialisation and the batch order, not the data.
"""
import copy
import json
import os
import sys

SEEDS = [0, 1, 2]


def cno(study):
    return study["models"][0]["config"]


def train(study):
    return study["models"][0]["train"]


def set_epochs(study, epochs):
    train(study)["epochs"] = epochs
    train(study)["schedule"]["t_max"] = epochs


def init_only(study):
    # One epoch at learning rate 1e-30 (and no weight decay): the initial weights (an
    # AdamW step moves a weight by about lr, far below the rounding of any f32 weight),
    # with the normalisers fitted as in training. The trainer refuses lr = 0.
    set_epochs(study, 1)
    t = train(study)
    t["optimizer"]["lr"] = 1e-30
    t["optimizer"]["weight_decay"] = 0.0
    t["schedule"]["eta_min"] = 1e-30


def grid100(study):
    out = study["protocol"]["output"]
    out["nt"], out["nx"] = 100, 100
    study["eval"]["fine_grid"] = None


VARIANTS = {
    "base": lambda s: None,
    "init": init_only,
    "bn": lambda s: cno(s).update(batch_norm=True),
    "time_replicate": lambda s: cno(s).update(time_padding="replicate"),
    "time_reflect": lambda s: cno(s).update(time_padding="reflect"),
    "time_causal": lambda s: cno(s).update(time_padding="causal"),
    "space_reflect": lambda s: cno(s).update(space_padding="reflect"),
    "both_replicate": lambda s: cno(s).update(time_padding="replicate", space_padding="replicate"),
    "no_normalizer": lambda s: train(s).update(normalizer="none"),
    "long": lambda s: set_epochs(s, 105),
    "grid100": grid100,
    "paper_model": lambda s: study_paper_model(s),
    "augmented": lambda s: study_augmented(s),
}


def study_augmented(study):
    # The study's delay-augmentation remedy (fno+aug) applied to CNO: randomly delayed copies
    # of the training samples, up to the study's augment_max_delay, with the same 45/35
    # epoch ratio as fno+aug against fno.
    study["models"][0]["variant"] = "augmented"
    set_epochs(study, 45)


def study_paper_model(study):
    # The paper-sized CNO (the default protocol's `cno` entry) on the quick data and epochs,
    # at that entry's learning rate: at the quick CNO's 3e-3 it diverges (seed 0: training
    # loss 1e5 after 30 epochs).
    c = cno(study)
    c.update(n_layers=4, n_res=4, n_res_neck=4, channel_multiplier=16, latent_lift_proj_dim=64)
    t = train(study)
    t["optimizer"]["lr"] = 1e-3
    t["schedule"]["eta_min"] = 1e-5


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    mode, base_path, out = sys.argv[1:4]
    with open(base_path) as f:
        base = json.load(f)
    if mode == "protocol":
        with open(out, "w") as f:
            json.dump(base["protocol"], f, indent=1)
        return
    names = sys.argv[4:] or list(VARIANTS)
    os.makedirs(out, exist_ok=True)
    for name in names:
        for seed in SEEDS:
            study = copy.deepcopy(base)
            VARIANTS[name](study)
            study["seed"] = seed
            train(study)["seed"] = seed
            with open(os.path.join(out, f"{name}.s{seed}.json"), "w") as f:
                json.dump(study, f, indent=1)


if __name__ == "__main__":
    main()
