"""Rule evaluate: one (backend, mode)'s best model on the test split; predictions, overlays."""

from pathlib import Path

from distmis.workflow import start_script

start_script(snakemake)  # noqa: F821 - injected by Snakemake

from distmis.evaluate.run import evaluate_model  # noqa: E402

output = snakemake.output  # noqa: F821
out_dir = Path(output.metrics).parent
# evaluate_model names its outputs inside out_dir; the rule's must be those names.
expected = {
    "summary": out_dir / "summary.json",
    "predictions": out_dir / "predictions",
    "overlays": out_dir / "overlays",
}
for name, path in expected.items():
    if Path(getattr(output, name)) != path:
        raise ValueError(f"rule output {name} must be {path}, got {getattr(output, name)}")
evaluate_model(
    Path(snakemake.input.model),  # noqa: F821
    Path(snakemake.input.info).parent,  # noqa: F821
    out_dir,
    threshold=float(snakemake.params.threshold),  # noqa: F821
    overlay_cases=int(snakemake.params.overlay_cases),  # noqa: F821
)
