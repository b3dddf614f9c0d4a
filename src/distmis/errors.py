"""Exceptions the CLI turns into a one-line reason and a non-zero exit."""

from __future__ import annotations


class DistmisError(Exception):
    """Base class: a user-facing problem with inputs, config or environment."""


class ConfigError(DistmisError):
    """config.yaml (or a CLI override) is invalid; the message names the key."""


class DownloadError(DistmisError):
    """Fetching, verifying or extracting the dataset archive failed."""


class DatasetError(DistmisError):
    """The MSD dataset folder is unusable as a whole (layout, dataset.json)."""


class CaseError(DistmisError):
    """One case cannot be converted; skippable with skip_bad_cases."""

    def __init__(self, case_id: str, problem: str) -> None:
        super().__init__(f"case {case_id}: {problem}")
        self.case_id = case_id
        self.problem = problem

    def __reduce__(self):
        # Raised in conversion worker processes: unpickling calls the class with the
        # constructor's own arguments, not with the formatted message in self.args.
        return (type(self), (self.case_id, self.problem))


class ContractError(DistmisError):
    """A file passed between stages is missing or malformed; names the file and its maker."""


class DeviceError(DistmisError):
    """GPUs were asked for and the framework cannot train on them (no GPU seen, a CPU-only
    build, a driver too old, an architecture the build lacks, no NCCL). One line: the host,
    the framework and its CUDA build, what it saw and the fix. Raised in Ray workers too, so
    it pickles with its arguments."""

    def __init__(
        self, host: str, framework: str, cuda_build: str | None, problems: tuple[str, ...]
    ) -> None:
        super().__init__(
            f"GPU check failed on {host}: {framework} (CUDA build {cuda_build or 'none'}) "
            + "; and it ".join(problems)
        )
        self.host = host
        self.framework = framework
        self.cuda_build = cuda_build
        self.problems = tuple(problems)

    def __reduce__(self):
        return (type(self), (self.host, self.framework, self.cuda_build, self.problems))


def _size(n_bytes: int) -> str:
    # GB at the paper's size; MB below 10 MB, where "0.00 GB" would hide the numbers.
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 10_000_000 else f"{n_bytes / 1e6:.2f} MB"


def _either(options: tuple[str, ...]) -> str:
    # "a; b; or c": the options themselves hold commas.
    return "; or ".join(["; ".join(options[:-1]), options[-1]] if len(options) > 1 else options)


class CacheSpaceError(DistmisError):
    """A split's node cache does not fit where it would be written. One line: the split, the
    folder, the bytes needed and available, the limit that is short and the fixes. Raised in
    Ray workers, so it pickles with its arguments."""

    def __init__(
        self,
        split: str,
        folder: str,
        needed: int,
        available: int,
        limit: str,
        fixes: tuple[str, ...],
    ) -> None:
        super().__init__(
            f"no room to cache split {split!r} in {folder}: it needs {_size(needed)} but "
            f"{limit} is {_size(max(available, 0))}; fix: {_either(fixes)}"
        )
        self.split = split
        self.folder = folder
        self.needed = needed
        self.available = available
        self.limit = limit
        self.fixes = tuple(fixes)

    def __reduce__(self):
        return (
            type(self),
            (self.split, self.folder, self.needed, self.available, self.limit, self.fixes),
        )
