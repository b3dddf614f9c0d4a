# Scaling stage: training timings → scaling.csv (rule scaling) → figures (rule plot_scaling),
# all shown by `snakemake --report`. Both rules only read the training contract (and scaling
# rule evaluate's summaries), so `--forcerun plot_scaling` redraws the figures and retrains
# nothing.


# Seconds of work on one core: not worth a trip through a batch queue.
localrules:
    scaling,
    plot_scaling,


PLOTS_DIR = "results/plot_scaling"
# trials.csv beside every summary.json the config asks for. The trials' epochs.jsonl (time
# to quality) sit beside them too, but their trial ids are only known once a run has ended:
# the summary.json input stands for them, as the training rule writes it last.
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
    params:
        # Dice a run may trail its final best and count as having reached it.
        quality_tolerance=config["report"]["quality_tolerance"],
        # The one Dice every run is timed to (time_to_target_seconds), over all these runs.
        quality_target=config["report"]["quality_target"],
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
        quality=report(
            f"{PLOTS_DIR}/quality.png",
            caption="../report/quality.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "quality"},
        ),
        quality_pdf=f"{PLOTS_DIR}/quality.pdf",
        time_to_target=report(
            f"{PLOTS_DIR}/time_to_target.png",
            caption="../report/time_to_target.rst",
            category="Scaling",
            subcategory="Summary",
            labels={"result": "time to target"},
        ),
        time_to_target_pdf=f"{PLOTS_DIR}/time_to_target.pdf",
        # One timeline per run the config asks for (the runs train_outputs() lists); the
        # mode is the run's folder: data, experiment or hybrid{k}.
        timelines=[
            report(
                f"{PLOTS_DIR}/timeline_{backend}_{mode}_{gpus}gpu.png",
                caption="../report/timeline.rst",
                category="Scaling",
                subcategory="Timelines",
                labels={"backend": backend, "mode": mode, "G": str(gpus)},
            )
            for backend in BACKENDS
            for mode, gpu_counts in RUN_FOLDERS.items()
            for gpus in gpu_counts
        ],
        timelines_pdf=[
            f"{PLOTS_DIR}/timeline_{backend}_{mode}_{gpus}gpu.pdf"
            for backend in BACKENDS
            for mode, gpu_counts in RUN_FOLDERS.items()
            for gpus in gpu_counts
        ],
    log:
        "logs/plot_scaling.log",
    conda:
        "../envs/plots.yaml"
    resources:
        runtime=10,
    params:
        references=config["report"]["references"],
        quality_tolerance=config["report"]["quality_tolerance"],
    script:
        "../workflow_scripts/plot_scaling.py"
