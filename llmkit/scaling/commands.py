"""The command-line side of `llmkit.scaling`: `llmkit scaling sweep | fit | predict`. `llmkit/cli.py` calls
`add_scaling_verb` once; everything heavy is imported when a command runs, so `llmkit --help` stays fast."""

from __future__ import annotations

import json
import math
from pathlib import Path

from llmkit.arg_types import float_in


def add_scaling_verb(verbs) -> None:
    p = verbs.add_parser("scaling", help="measure scaling laws: IsoFLOP sweeps, Chinchilla fits, compute-optimal "
                         "predictions")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    s = actions.add_parser("sweep", help="one pretraining run per (budget, size), D = C / FLOPs-per-token; "
                           "resumable: finished runs in DIR/runs.jsonl are skipped")
    s.add_argument("--out", required=True, help="sweep directory: runs.jsonl, sweep.json, runs/NAME/")
    s.add_argument("--budgets", required=True, help="compute budgets in FLOPs, e.g. 1e12,3e12,1e13")
    s.add_argument("--sizes", default=None, help="model shapes LAYERSxWIDTH[xHEADS],... e.g. 2x128,4x256")
    s.add_argument("--depths", default=None, help="or depths 1,2,3,...: d_model = --width-per-layer x depth")
    s.add_argument("--width-per-layer", type=int, default=64, help="the depth rule's aspect ratio (default 64)")
    s.add_argument("--head-dim", type=int, default=64, help="attention head size the rule aims for (default 64)")
    s.add_argument("--preset", default="shakespeare-cpu", help="training preset every run starts from "
                   "(default shakespeare-cpu: the built-in corpus)")
    s.add_argument("--warmup-fraction", type=float, default=0.05, help="warmup steps as a fraction of each run")
    s.add_argument("--dry-run", action="store_true", help="print the plan (N, D, steps, epochs) and stop")
    s.add_argument("overrides", nargs="*", help="field=value for every run, e.g. lr=1e-3 eval_tokens=65536 "
                   "data=SHARDS val_data=SHARDS")
    s.set_defaults(handler=cmd_scaling_sweep)

    f = actions.add_parser("fit", help="IsoFLOP parabolas and power laws (approach 2), the parametric law "
                           "L = E + A/N^alpha + B/D^beta (approach 3), bootstrap intervals, plots")
    f.add_argument("runs", help="sweep directory (its runs.jsonl), or any runs.jsonl with params, tokens, flops "
                   "and val_loss per line")
    f.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the 95%% intervals")
    f.add_argument("--max-epochs", type=float_in("[0, inf]"), default=4.0, help="leave out runs that repeat their data more "
                   "often (Muennighoff et al. 2023: ~4 epochs cost little); 0 = keep all")
    f.add_argument("--no-plots", action="store_true", help="write fit.json only")
    f.set_defaults(handler=cmd_scaling_fit)

    r = actions.add_parser("predict", help="compute-optimal model and tokens for a budget, the predicted loss, "
                           "and the pretrain command")
    r.add_argument("dir", help="a directory holding fit.json (and sweep.json for the model shape)")
    r.add_argument("--budget", type=float, required=True, help="compute budget in FLOPs")
    r.add_argument("--out", default="RUN", help="the run directory to put in the printed command")
    r.add_argument("--json", action="store_true", help="print the prediction as JSON")
    r.set_defaults(handler=cmd_scaling_predict)

    z = actions.add_parser("right-size", help="the model size for a time budget on this machine: each candidate's "
                           "tokens/s measured with a few training steps, its loss predicted by the fitted law")
    z.add_argument("dir", help="a sweep directory holding fit.json and sweep.json")
    z.add_argument("--seconds", type=float_in("(0, inf)"), required=True, help="training time budget in seconds")
    z.add_argument("--preset", default=None, help="the training preset to size (default: the sweep's)")
    z.add_argument("--sizes", default=None, help="more shapes to try besides the sweep's rule and the preset's "
                   "own, LAYERSxWIDTH[xHEADS],...")
    z.add_argument("--json", action="store_true", help="print the result as JSON (the table goes to stderr)")
    z.add_argument("overrides", nargs="*", help="field=value for the preset while timing, e.g. dtype=fp32")
    z.set_defaults(handler=cmd_scaling_right_size)


def scaled_pretrain(config, directory: str, overrides: list[str]):
    """`llmkit pretrain --scaling DIR`: the config with its token budget from DIR/fit.json, said aloud."""
    from llmkit.scaling.predict import scaled_pretrain_config

    config, message = scaled_pretrain_config(config, directory, overrides)
    print(message)
    return config


def cmd_scaling_sweep(args) -> None:
    from llmkit.scaling.shapes import parse_budgets, parse_sizes
    from llmkit.scaling.sweep import run_sweep

    shapes = parse_sizes(args.sizes, args.depths, args.width_per_layer, args.head_dim)
    added = run_sweep(args.out, parse_budgets(args.budgets), shapes, args.preset, args.overrides,
                      args.warmup_fraction, {"width_per_layer": args.width_per_layer, "head_dim": args.head_dim},
                      dry_run=args.dry_run)
    if not args.dry_run:
        print(f"sweep: {len(added)} run(s) trained; fit them: llmkit scaling fit {args.out}")


def _ci(values) -> str:
    return f" [{values[0]:.3g}, {values[1]:.3g}]" if values else ""


def cmd_scaling_fit(args) -> None:
    from llmkit.atomic import atomic_write_text
    from llmkit.scaling.fit import fit_runs
    from llmkit.scaling.predict import FIT_FILE
    from llmkit.scaling.runs import read_runs

    source = Path(args.runs)
    out = source if source.is_dir() else source.parent
    fit = fit_runs(read_runs(source), args.bootstrap, args.max_epochs or None)
    for note in fit.notes:
        print(f"note: {note}")
    a2, a3 = fit.approach2, fit.approach3
    kept = (f"runs beyond {args.max_epochs:g} epochs of their data left out" if args.max_epochs
            else "runs repeating data kept (--max-epochs 0)")
    print(f"{len(fit.runs_used)} runs in {len(a2['profiles'])} budgets; {kept}")
    print("approach 2, IsoFLOP profiles (Hoffmann et al. 2022):")
    for row in a2["budgets"]:
        shown = (f"N_opt {row['n_opt']:.3g}  D_opt {row['d_opt']:.3g}  loss {row['loss_opt']:.4f}"
                 if row["n_opt"] else "no minimum")
        print(f"  C {row['budget']:.3g}: {row['runs']} runs; {shown}" + (f"  ({row['note']})" if row["note"] else ""))
    if "a" in a2:
        print(f"  N_opt ~ C^a, a = {a2['a']:.3f}{_ci(a2.get('a_ci95'))};  D_opt ~ C^b, b = {a2['b']:.3f}"
              f"{_ci(a2.get('b_ci95'))}  (Chinchilla: 0.50, 0.50)")
    else:
        print(f"  no power laws: {a2.get('note')}")
    print("approach 3, L(N, D) = E + A/N^alpha + B/D^beta (Huber on log-loss, L-BFGS; Besiroglu et al. 2024):")
    if "alpha" in a3:
        print("  " + ",  ".join(f"{k} = {a3[k]:.4g}{_ci(a3.get(k + '_ci95'))}" for k in ("E", "A", "B", "alpha", "beta")))
        print(f"  implied a = {a3['a']:.3f}{_ci(a3.get('a_ci95'))}, b = {a3['b']:.3f}{_ci(a3.get('b_ci95'))}; "
              f"residual rms {a3['residual_rms']:.4f} in ln loss  (Besiroglu et al.: E 1.82, A 482, B 2085, "
              "alpha 0.35, beta 0.37)")
    else:
        print(f"  not fitted: {a3.get('note')}")
    print("compute-optimal allocation:")
    for row in fit.allocations:
        for name in ("approach2", "approach3"):
            if name in row:
                x = row[name]
                loss = f", loss {x['loss']:.4f}{_ci(x.get('loss_ci95'))}" if "loss" in x else ""
                print(f"  C {row['budget']:.3g} ({name[-1]}): N {x['n_opt']:.3g}, D {x['d_opt']:.3g}, "
                      f"{x['tokens_per_param']:.1f} tokens/param{loss}")
    atomic_write_text(out / FIT_FILE, json.dumps(fit.to_json(), indent=1) + "\n")
    written = [out / FIT_FILE]
    if not args.no_plots:
        from llmkit.scaling.plots import plot_fit

        written += plot_fit(fit, out)
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_scaling_predict(args) -> None:
    from llmkit.scaling.predict import predict

    result = predict(args.dir, args.budget, args.out)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"budget {args.budget:.3g} FLOPs:")
    for name, what in (("approach2", "IsoFLOP frontier"), ("approach3", "parametric law")):
        if name in result:
            x = result[name]
            loss = f", predicted loss {x['loss']:.4f}{_ci(x.get('loss_ci95'))}" if "loss" in x else ""
            print(f"  {what}: N_opt {x['n_opt']:.3g}, D_opt {x['d_opt']:.3g} ({x['tokens_per_param']:.1f} "
                  f"tokens/param){loss}")
    model = result.get("model")
    if model:
        print(f"  model {model['shape']['label']}: N {model['params']:,} ({model['params_total']:,} parameters stored), "
              f"D {int(model['tokens']):,}, predicted loss {model['loss']:.4f}{_ci(model.get('loss_ci95'))} "
              "(95%: the fit's uncertainty and one run's scatter)")
        print(f"  {model['command']}")
    else:
        print("  (no sweep.json beside fit.json: no model shape; choose one of about N_opt parameters and pass "
              "max_tokens=D_opt to llmkit pretrain)")


def cmd_scaling_right_size(args) -> None:
    import sys

    from llmkit.errors import DataError
    from llmkit.scaling.predict import _read_settings, load_fit
    from llmkit.scaling.right_size import right_size
    from llmkit.scaling.runs import read_runs
    from llmkit.scaling.shapes import parse_sizes

    directory = Path(args.dir)
    law, settings = load_fit(directory)["approach3"], _read_settings(directory)
    if settings is None:
        raise DataError(f"{directory / 'sweep.json'}: no such file; right-size needs a sweep made by "
                        "`llmkit scaling sweep` (its model, vocabulary and shape rule)")
    if not law.get("alpha", 0) > 0:
        raise DataError(f"{directory / 'fit.json'}: the parametric law was not fitted ({law.get('note')}); "
                        "sweep more sizes and budgets")
    rule = settings.get("rule") or {}
    extra = parse_sizes(args.sizes, None, 64, rule.get("head_dim", 64)) if args.sizes else []
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print
    say(f"timing candidate shapes for {args.seconds:g} s of training (a few steps each, on this machine):")
    largest = max((float(r["params"]) for r in read_runs(directory)), default=math.inf)
    result = right_size(law, settings, args.seconds, args.preset or settings["preset"], args.overrides, extra, say=say,
                        max_params=largest)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    best = result["best"]
    print(f"best: {best['shape']['label']} (N {best['params']:,}), {best['tokens']:,} tokens in {args.seconds:g} s, "
          f"predicted loss {best['loss']:.4f}{_ci(best.get('loss_ci95'))}")
    print(f"  {result['command']}")
