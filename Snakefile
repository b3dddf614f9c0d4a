# DistMIS: how far distributed training speeds up hyperparameter tuning of a 3D U-Net on BraTS.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/scaling.smk"
include: "rules/plan.smk"


rule all:
    input:
        "results/tfrecords/info.json",
        train_outputs(),
        rules.plot_scaling.output,
        eval_outputs(),
        rules.plan.output if PLANNED else [],
