"""The eval harness: benchmark registry, prompting, generation backends, metrics and report.

Importing this package (and the registry) does not import torch; only the generation
backends do, when they run.
"""

from .files import BenchmarkFileMissing, BenchmarkFiles, BenchmarkFormatError
from .items import BenchItem, Benchmark, Family
from .registry import BenchmarkInfo, benchmark_names, get_benchmark, load_benchmark, register

__all__ = [
    "BenchItem",
    "Benchmark",
    "BenchmarkFileMissing",
    "BenchmarkFiles",
    "BenchmarkFormatError",
    "BenchmarkInfo",
    "Family",
    "benchmark_names",
    "get_benchmark",
    "load_benchmark",
    "register",
]
