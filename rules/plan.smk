# Planning: the measured runs' calibrations → predicted makespan, speedup and GPU-hours per
# mode and G, predicted beside measured, and a projection onto GPUs (rule plan).


# Seconds of arithmetic on one core: not worth a trip through a batch queue.
localrules:
    plan,


rule plan:
    input:
        # The planner measures each run from its files (distmis.run_folder); summary.json is
        # written last.
        summaries=train_outputs(),
    output:
        table="results/plan/plan.csv",
        calibrations=expand("results/plan/calibration_{backend}.json", backend=BACKENDS),
        figure=report(
            "results/plan/plan.png",
            caption="../report/plan.rst",
            category="Planning",
            subcategory="Forecast",
            labels={"result": "plan"},
        ),
        figure_pdf="results/plan/plan.pdf",
    log:
        "logs/plan.log",
    conda:
        "../envs/plots.yaml"
    resources:
        runtime=10,
    params:
        gpus=config["plan"]["gpus"],
        gpus_per_trial=config["plan"]["gpus_per_trial"],
        gpus_per_node=config["train"]["gpus_per_node"],
        inter_node_bandwidth=config["plan"]["inter_node_bandwidth"],
        projection=config["plan"]["projection"],
        asha=lambda wildcards: (
            [
                config["train"]["asha"]["grace_period"],
                config["train"]["asha"]["reduction_factor"],
            ]
            if config["train"]["scheduler"] == "asha"
            else None
        ),
        references=config["report"]["references"],
    script:
        "../workflow_scripts/plan.py"
