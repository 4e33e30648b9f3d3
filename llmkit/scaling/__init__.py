"""Scaling laws measured on your own data and machine: `llmkit scaling sweep | fit | predict`.

sweep.py   for each compute budget C and model size N, one pretraining run through the one Trainer with
           D = C / flops_per_token tokens; each finished run appended to DIR/runs.jsonl
runs.py    reading and appending runs.jsonl (any file of `params`, `tokens`, `flops`, `val_loss` lines)
shapes.py  model shapes from a depth/width rule, and the parameter count N that the FLOP rule uses
fit.py     IsoFLOP parabolas (Hoffmann et al. 2022, approach 2) and the parametric law
           L(N, D) = E + A/N^alpha + B/D^beta (approach 3, as corrected by Besiroglu et al. 2024)
plots.py   IsoFLOP curves, the compute-optimal frontier, the fitted surface's contours
predict.py the compute-optimal model and data for a budget, with the predicted loss and its interval

This package imports nothing heavy at import time: `llmkit --help` reads commands.py.
"""
