# Data stage: get BraTS (or synthesize a stand-in), then NIfTI → TFRecord shards.


localrules:
    download_brats,


rule synthesize_brats:
    output:
        task=directory("results/data/synthetic/Task01_BrainTumour"),
    log:
        "logs/synthesize_brats.log",
    conda:
        "../envs/data.yaml"
    threads: 2
    resources:
        runtime=30,
    params:
        cases=DATA["synthetic"]["cases"],
        shape=DATA["synthetic"]["shape"],
        seed=DATA["synthetic"]["seed"],
    script:
        "../workflow_scripts/synthesize_brats.py"


# The download is a local rule: compute nodes often have no internet.
rule download_brats:
    output:
        task=directory("results/data/msd/Task01_BrainTumour"),
    log:
        "logs/download_brats.log",
    conda:
        "../envs/data.yaml"
    params:
        url=DATA["download"]["url"],
        md5=DATA["download"]["md5"] or "",
        archive=DATA["download"]["archive"] or "",
    script:
        "../workflow_scripts/download_brats.py"


rule plan_tfrecords:
    input:
        task=TASK_DIR,
    output:
        plan="results/tfrecords/plan.json",
    log:
        "logs/plan_tfrecords.log",
    conda:
        "../envs/data.yaml"
    params:
        preprocess=PREPROCESS,
    script:
        "../workflow_scripts/plan_tfrecords.py"


# One job per shard, so conversion uses every core locally and spreads over SLURM nodes.
rule convert_tfrecords:
    input:
        plan="results/tfrecords/plan.json",
    output:
        shard="results/tfrecords/{split}-{index}-of-{total}.{ext}",
        manifest="results/tfrecords/manifests/{split}-{index}-of-{total}.{ext}.json",
    log:
        "logs/convert_tfrecords/{split}-{index}-of-{total}.{ext}.log",
    wildcard_constraints:
        split="train|val|test",
        index=r"\d+",
        total=r"\d+",
        ext=r"tfrecord(\.gz)?",
    conda:
        "../envs/data.yaml"
    resources:
        mem_mb=CONVERSION_MEM_MB,
        runtime=60,
    script:
        "../workflow_scripts/convert_tfrecords.py"


rule index_tfrecords:
    input:
        plan="results/tfrecords/plan.json",
        manifests=expand("results/tfrecords/manifests/{name}.json", name=shard_names()),
    output:
        info="results/tfrecords/info.json",
    log:
        "logs/index_tfrecords.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/index_tfrecords.py"
