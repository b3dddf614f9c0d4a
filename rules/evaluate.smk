# Evaluation: the best model of the largest G per (backend, mode), scored on the test split
# in each case's source space (metrics.csv, summary.json), its predictions as NIfTI, and
# overlays. Only the training contract (the best_model.json card and the weights it names)
# and info.json + shards are read.

EVAL_DIR = "results/evaluate/{backend}/{mode}"
# The largest run holds the most tuning effort per mode; every G trains the same grid
# (eval_gpus in common.smk: hybrid{k} only runs where k divides G).


rule evaluate:
    input:
        model=lambda w: f"results/train/{w.backend}/{w.mode}/{eval_gpus(w.mode)}gpu/best_model.json",
        info="results/tfrecords/info.json",
    output:
        metrics=report(
            f"{EVAL_DIR}/metrics.csv",
            caption="../report/evaluate_metrics.rst",
            category="Evaluation",
            subcategory="{backend} {mode}",
            labels={"backend": "{backend}", "mode": "{mode}", "result": "metrics"},
        ),
        summary=f"{EVAL_DIR}/summary.json",
        predictions=directory(f"{EVAL_DIR}/predictions"),
        overlays=report(
            directory(f"{EVAL_DIR}/overlays"),
            patterns=["{case}.png"],
            caption="../report/evaluate_overlays.rst",
            category="Evaluation",
            subcategory="{backend} {mode}",
            labels={"backend": "{backend}", "mode": "{mode}", "case": "{case}"},
        ),
    log:
        "logs/evaluate/{backend}/{mode}.log",
    conda:
        train_conda_env
    threads: 4
    resources:
        runtime=120,
        mem_mb=evaluation_mem_mb,
    params:
        threshold=config["evaluate"]["threshold"],
        overlay_cases=config["evaluate"]["overlay_cases"],
    script:
        "../workflow_scripts/evaluate.py"
