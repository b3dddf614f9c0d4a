# Training: the same grid, for every G, with data parallelism (Ray Train) and experiment
# parallelism (Ray Tune). Each job's timings are the product, so a job must not share its
# cores or GPUs with another: `threads: training_threads` makes a local run serialise them.


rule train_data_parallel:
    input:
        info="results/tfrecords/info.json",
    output:
        trials="results/train/data/{gpus}gpu/trials.csv",
        summary="results/train/data/{gpus}gpu/summary.json",
        model="results/train/data/{gpus}gpu/best_model.keras",
    log:
        "logs/train_data_parallel/{gpus}gpu.log",
    conda:
        "../envs/train.yaml"
    threads: training_threads
    resources:
        **TRAIN_RESOURCES,
    params:
        out=lambda wildcards: f"results/train/data/{wildcards.gpus}gpu",
        train=TRAIN,
    script:
        "../workflow_scripts/train_data_parallel.py"


rule train_experiment_parallel:
    input:
        info="results/tfrecords/info.json",
    output:
        trials="results/train/experiment/{gpus}gpu/trials.csv",
        summary="results/train/experiment/{gpus}gpu/summary.json",
        model="results/train/experiment/{gpus}gpu/best_model.keras",
    log:
        "logs/train_experiment_parallel/{gpus}gpu.log",
    conda:
        "../envs/train.yaml"
    threads: training_threads
    resources:
        **TRAIN_RESOURCES,
    params:
        out=lambda wildcards: f"results/train/experiment/{wildcards.gpus}gpu",
        train=TRAIN,
    script:
        "../workflow_scripts/train_experiment_parallel.py"
