# Scaling stage: training timings → scaling.csv (rule scaling) → figures (rule plot_scaling),
# all shown by `snakemake --report`. Both rules only read the training contract (and scaling
# rule evaluate's summaries), so `--forcerun plot_scaling` redraws the figures and retrains
# nothing.


# Seconds of work on one core: not worth a trip through a batch queue.
localrules:
    scaling,
    plot_scaling,


PLOTS_DIR = "results/plot_scaling"
# trials.csv beside every summary.json the config asks for.
TRAIN_TRIALS = [path.replace("summary.json", "trials.csv") for path in train_outputs()]


rule scaling:
    input:
        summaries=train_outputs(),
        trials=TRAIN_TRIALS,
        # The test Dice each (backend, mode)'s best model reached, shown beside its speedup.
        evals=eval_outputs(),
    output:
        table=report(
            "results/scaling/scaling.csv",
            caption="../report/scaling.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "table"},
        ),
    log:
        "logs/scaling.log",
    conda:
        "../envs/plots.yaml"
    resources:
        runtime=10,
    script:
        "../workflow_scripts/scaling.py"


rule plot_scaling:
    input:
        table=rules.scaling.output.table,
        summaries=train_outputs(),
        trials=TRAIN_TRIALS,
    output:
        speedup=report(
            f"{PLOTS_DIR}/speedup.png",
            caption="../report/speedup.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "speedup"},
        ),
        speedup_pdf=f"{PLOTS_DIR}/speedup.pdf",
        efficiency=report(
            f"{PLOTS_DIR}/efficiency.png",
            caption="../report/efficiency.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "efficiency"},
        ),
        efficiency_pdf=f"{PLOTS_DIR}/efficiency.pdf",
        makespan=report(
            f"{PLOTS_DIR}/makespan.png",
            caption="../report/makespan.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "makespan"},
        ),
        makespan_pdf=f"{PLOTS_DIR}/makespan.pdf",
        # One timeline per run the config asks for (the runs train_outputs() lists).
        timelines=[
            report(
                f"{PLOTS_DIR}/timeline_{backend}_{mode}_{gpus}gpu.png",
                caption="../report/timeline.rst",
                category="Scaling",
                subcategory="Timelines",
                labels={"backend": backend, "mode": mode, "G": str(gpus)},
            )
            for backend in BACKENDS
            for mode in TRAIN["modes"]
            for gpus in TRAIN["gpu_counts"]
        ],
        timelines_pdf=expand(
            f"{PLOTS_DIR}/timeline_{{backend}}_{{mode}}_{{gpus}}gpu.pdf",
            backend=BACKENDS,
            mode=TRAIN["modes"],
            gpus=TRAIN["gpu_counts"],
        ),
    log:
        "logs/plot_scaling.log",
    conda:
        "../envs/plots.yaml"
    resources:
        runtime=10,
    params:
        references=config["report"]["references"],
    script:
        "../workflow_scripts/plot_scaling.py"
