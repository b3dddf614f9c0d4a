# Data stage: get BraTS (or synthesize a stand-in), then NIfTI → TFRecord shards.


localrules:
    download_brats,


rule synthesize_brats:
    output:
        task=directory("results/data/synthetic/Task01_BrainTumour"),
    params:
        cases=DATA["synthetic"]["cases"],
        shape=" ".join(map(str, DATA["synthetic"]["shape"])),
        seed=DATA["synthetic"]["seed"],
    log:
        "logs/synthesize_brats.log",
    threads: 2
    resources:
        runtime=30,
    conda:
        "../envs/data.yaml"
    shell:
        "python -m distmis.cli synthesize --out $(dirname {output.task}) --cases {params.cases} "
        "--shape {params.shape} --seed {params.seed} --workers {threads} > {log} 2>&1"


# The download is a local rule: compute nodes often have no internet.
rule download_brats:
    output:
        task=directory("results/data/msd/Task01_BrainTumour"),
    params:
        url=DATA["download"]["url"],
        md5=DATA["download"]["md5"] or "",
        archive=DATA["download"]["archive"] or "",
    log:
        "logs/download_brats.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/download_brats.py"


rule plan_tfrecords:
    input:
        task=TASK_DIR,
    output:
        plan=TFRECORD_DIR + "/plan.json",
    params:
        preprocess=PREPROCESS,
    log:
        "logs/plan_tfrecords.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/plan_tfrecords.py"


# One job per shard, so conversion uses every core locally and spreads over SLURM nodes.
rule convert_tfrecords:
    input:
        plan=TFRECORD_DIR + "/plan.json",
    output:
        shard=TFRECORD_DIR + "/{split}-{index}-of-{total}.{ext}",
        manifest=TFRECORD_DIR + "/manifests/{split}-{index}-of-{total}.{ext}.json",
    wildcard_constraints:
        split="train|val|test",
        index=r"\d+",
        total=r"\d+",
        ext=r"tfrecord(\.gz)?",
    log:
        "logs/convert_tfrecords/{split}-{index}-of-{total}.{ext}.log",
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/convert_tfrecords.py"


rule index_tfrecords:
    input:
        plan=TFRECORD_DIR + "/plan.json",
        manifests=expand(TFRECORD_DIR + "/manifests/{name}.json", name=shard_names()),
    output:
        info=TFRECORD_DIR + "/info.json",
    log:
        "logs/index_tfrecords.log",
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/index_tfrecords.py"
