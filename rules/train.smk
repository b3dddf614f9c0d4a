# Training: the same grid, for every backend and G, with data parallelism (Ray Train),
# experiment parallelism (Ray Tune) and hybrid{k} (Ray Tune over Ray Train runs of k GPUs). Each job's timings are the product, so a job must not
# share its cores or GPUs with another: `threads: training_threads` makes a local run
# serialise them. The scripts read the backend from the {backend} wildcard. best_model.json
# (the model card) is written after the weights it names, so it stands for both.


# Before the first training job of a backend, on the training partition: can the framework
# train on the GPUs one node of a training job holds? A misconfigured cluster (CPU build, a
# driver too old, missing CUDA libraries) fails here in a minute, not after the data stage.
# Training jobs take the report as ancient(): a new check never retrains finished runs.
rule preflight:
    output:
        report="results/preflight/{backend}.json",
    log:
        "logs/preflight/{backend}.log",
    conda:
        train_conda_env
    threads: preflight_threads
    resources:
        nodes=1,
        tasks=1,
        cpus_per_task=1,
        gres=f"gpu:{PREFLIGHT_GPUS}" if PREFLIGHT_GPUS else "",
        tasks_per_gpu=0,
        runtime=15,
    params:
        gpus=PREFLIGHT_GPUS,
        nccl=PREFLIGHT_NCCL,
    script:
        "../workflow_scripts/preflight.py"


rule train_data_parallel:
    input:
        info="results/tfrecords/info.json",
        preflight=ancient("results/preflight/{backend}.json"),
    output:
        trials="results/train/{backend}/data/{gpus}gpu/trials.csv",
        summary="results/train/{backend}/data/{gpus}gpu/summary.json",
        model="results/train/{backend}/data/{gpus}gpu/best_model.json",
    log:
        "logs/train_data_parallel/{backend}/{gpus}gpu.log",
    conda:
        train_conda_env
    threads: training_threads
    resources:
        **train_resources("data"),
    params:
        out=lambda wildcards: f"results/train/{wildcards.backend}/data/{wildcards.gpus}gpu",
        train=train_params,
    script:
        "../workflow_scripts/train_data_parallel.py"


rule train_experiment_parallel:
    input:
        info="results/tfrecords/info.json",
        preflight=ancient("results/preflight/{backend}.json"),
    output:
        trials="results/train/{backend}/experiment/{gpus}gpu/trials.csv",
        summary="results/train/{backend}/experiment/{gpus}gpu/summary.json",
        model="results/train/{backend}/experiment/{gpus}gpu/best_model.json",
    log:
        "logs/train_experiment_parallel/{backend}/{gpus}gpu.log",
    conda:
        train_conda_env
    threads: training_threads
    resources:
        **train_resources("experiment"),
    params:
        out=lambda wildcards: f"results/train/{wildcards.backend}/experiment/{wildcards.gpus}gpu",
        train=train_params,
    script:
        "../workflow_scripts/train_experiment_parallel.py"


rule train_hybrid_parallel:
    input:
        info="results/tfrecords/info.json",
        preflight=ancient("results/preflight/{backend}.json"),
    output:
        trials="results/train/{backend}/hybrid{k}/{gpus}gpu/trials.csv",
        summary="results/train/{backend}/hybrid{k}/{gpus}gpu/summary.json",
        model="results/train/{backend}/hybrid{k}/{gpus}gpu/best_model.json",
    log:
        "logs/train_hybrid_parallel/{backend}/hybrid{k}/{gpus}gpu.log",
    wildcard_constraints:
        k=r"\d+",
    conda:
        train_conda_env
    threads: training_threads
    resources:
        **train_resources("hybrid"),
    params:
        out=lambda wildcards: (
            f"results/train/{wildcards.backend}/hybrid{wildcards.k}/{wildcards.gpus}gpu"
        ),
        train=train_params,
    script:
        "../workflow_scripts/train_hybrid_parallel.py"
